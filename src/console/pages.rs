//! The console's pages (SPEC §10), rendered on the server with askama templates
//! (`templates/console/`), which escape everything they are given: a message id, a tag or a
//! line of output is always text. No JavaScript; one stylesheet at `/static/console.css`.
//! Overview `/`, Deliveries `/runs`, Run `/runs/{id}`, Dead letters `/dead` with its replay
//! form (`POST /dead/replay`, CSRF-checked), and the login form.

use std::time::SystemTime;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::auth::{self, Viewer};
use super::{Console, Replay, RunParams};
use crate::access::token_matches;
use crate::delivery::{DeadLetter, HookFigures, HourFigures, RunPage, RunRecord};

/// The stylesheet, served without login (the login page needs it too).
const STYLESHEET: &str = include_str!("console.css");
/// Its URL; the version makes a browser fetch a new one after an upgrade.
const STYLESHEET_URL: &str = concat!("/static/console-", env!("CARGO_PKG_VERSION"), ".css");
/// Dead letters listed at most.
const DEAD_LIMIT: usize = 500;
/// The outcomes a run can have, for the Deliveries filter.
const OUTCOMES: &[&str] = &[
    "succeeded",
    "failed",
    "timed_out",
    "killed",
    "interrupted",
    "not_started",
    "running",
];

pub(super) fn routes(config: &mut web::ServiceConfig) {
    config
        .route(STYLESHEET_URL, web::get().to(stylesheet))
        .route("/login", web::get().to(login_form))
        .route("/login", web::post().to(login))
        .route("/logout", web::post().to(logout))
        .route("/", web::get().to(overview))
        .route("/runs", web::get().to(runs))
        .route("/runs/{id}", web::get().to(run))
        .route("/dead", web::get().to(dead))
        .route("/dead/replay", web::post().to(replay))
        .default_service(web::to(not_found));
}

/// What every page's frame shows.
struct Frame {
    title: String,
    /// The nav entry of this page.
    active: &'static str,
    stylesheet: &'static str,
    instance: String,
    /// Signed in with the token: the sign-out form's CSRF token.
    csrf: Option<String>,
    read_only: bool,
}

impl Frame {
    fn new(console: &Console, viewer: &Viewer, title: &str, active: &'static str) -> Frame {
        let (csrf, read_only) = match viewer {
            Viewer::Operator { session } => (Some(console.keys.csrf(session)), false),
            Viewer::ReadOnly => (None, true),
        };
        Frame {
            title: title.to_owned(),
            active,
            stylesheet: STYLESHEET_URL,
            instance: console.dispatcher.config().server.instance.clone(),
            csrf,
            read_only,
        }
    }
}

/// A rendered page with `status`.
fn page(status: StatusCode, template: &impl Template) -> HttpResponse {
    match template.render() {
        Ok(html) => HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(html),
        Err(err) => HttpResponse::InternalServerError()
            .content_type("text/plain; charset=utf-8")
            .body(format!("cannot render the page: {err}")),
    }
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    stylesheet: &'static str,
    problem: Option<&'static str>,
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    frame: Frame,
    status: u16,
    message: String,
}

/// The login page with `status`, saying what went wrong if something did.
pub(super) fn login_page(status: StatusCode, problem: Option<&'static str>) -> HttpResponse {
    page(
        status,
        &LoginPage {
            stylesheet: STYLESHEET_URL,
            problem,
        },
    )
}

fn error_page(
    console: &Console,
    viewer: &Viewer,
    status: StatusCode,
    message: String,
) -> HttpResponse {
    let title = status.canonical_reason().unwrap_or("Error");
    page(
        status,
        &ErrorPage {
            frame: Frame::new(console, viewer, title, ""),
            status: status.as_u16(),
            message,
        },
    )
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .body(STYLESHEET)
}

async fn login_form(req: HttpRequest, console: web::Data<Console>) -> HttpResponse {
    if console.viewer(&req).is_ok() {
        return see_other("/");
    }
    login_page(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(console: web::Data<Console>, form: web::Form<LoginForm>) -> HttpResponse {
    let config = console.dispatcher.config();
    let Some(token) = config.console.as_ref().and_then(|c| c.token.as_deref()) else {
        // Nothing to sign in to: the console is open (read-only).
        return see_other("/");
    };
    if !token_matches(token, Some(&form.token)) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That token is not the console's."),
        );
    }
    let mut response = see_other("/");
    if let Ok(cookie) =
        header::HeaderValue::from_str(&auth::session_cookie(&console.keys.session(token)))
    {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: Option<String>,
}

async fn logout(
    viewer: Viewer,
    console: web::Data<Console>,
    form: web::Form<LogoutForm>,
) -> HttpResponse {
    if let Some(forbidden) = refuse_csrf(&console, &viewer, form.csrf.as_deref()) {
        return forbidden;
    }
    let mut response = see_other("/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        header::HeaderValue::from_static(
            "cmqhook_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

/// The 403 to answer unless `presented` is the CSRF token of `viewer`'s session.
fn refuse_csrf(
    console: &Console,
    viewer: &Viewer,
    presented: Option<&str>,
) -> Option<HttpResponse> {
    match viewer {
        Viewer::Operator { session } if console.keys.csrf_matches(session, presented) => None,
        Viewer::Operator { .. } => Some(error_page(
            console,
            viewer,
            StatusCode::FORBIDDEN,
            "The form's CSRF token is missing or not this session's: reload the page and try again."
                .to_owned(),
        )),
        Viewer::ReadOnly => Some(error_page(
            console,
            viewer,
            StatusCode::FORBIDDEN,
            "The console is read-only: set `token` in [console] to replay from it.".to_owned(),
        )),
    }
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

/// One hour's bar of the overview's chart, in SVG user units.
struct Bar {
    x: u32,
    ok_y: u32,
    ok_height: u32,
    failed_y: u32,
    failed_height: u32,
    label: String,
}

/// The chart's height and each bar's width (the gap included), in SVG user units.
const CHART_HEIGHT: u32 = 32;
const BAR_WIDTH: u32 = 6;

/// The 24 bars of `hourly`, scaled to the busiest hour.
fn bars(hourly: &[HourFigures]) -> Vec<Bar> {
    let busiest = hourly
        .iter()
        .map(|hour| hour.successes + hour.failures)
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = |count: u64| {
        let height = count * u64::from(CHART_HEIGHT) / busiest;
        // A single run in a busy day still shows.
        let height = if count > 0 { height.max(2) } else { 0 };
        u32::try_from(height).unwrap_or(CHART_HEIGHT)
    };
    hourly
        .iter()
        .zip(0u32..)
        .map(|(hour, index)| {
            let (ok_height, failed_height) = (scale(hour.successes), scale(hour.failures));
            let ok_y = CHART_HEIGHT - ok_height;
            let time = hour.hour.get(11..16).unwrap_or(&hour.hour);
            Bar {
                x: index * BAR_WIDTH,
                ok_y,
                ok_height,
                failed_y: ok_y.saturating_sub(failed_height),
                failed_height,
                label: format!(
                    "{time} UTC: {} succeeded, {} failed",
                    hour.successes, hour.failures
                ),
            }
        })
        .collect()
}

/// A row of the overview.
struct HookRow {
    figures: HookFigures,
    bars: Vec<Bar>,
    p50: String,
    p95: String,
    last_run_at: String,
    last_failure_at: String,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    frame: Frame,
    hooks: Vec<HookRow>,
    chart_width: u32,
    chart_height: u32,
    runs: u64,
    failures: u64,
}

async fn overview(viewer: Viewer, console: web::Data<Console>) -> HttpResponse {
    let config = console.dispatcher.config();
    let names: Vec<String> = config.hooks.iter().map(|hook| hook.name.clone()).collect();
    let figures = match console
        .dispatcher
        .deliveries()
        .hook_figures(&names, SystemTime::now())
        .await
    {
        Ok(figures) => figures,
        Err(reason) => return unreadable(&console, &viewer, reason),
    };
    let hooks: Vec<HookRow> = figures
        .into_iter()
        .map(|figures| HookRow {
            bars: bars(&figures.hourly),
            p50: duration(figures.p50_ms),
            p95: duration(figures.p95_ms),
            last_run_at: figures
                .last_run_at
                .as_deref()
                .map_or_else(String::new, time),
            last_failure_at: figures
                .last_failure
                .as_ref()
                .map_or_else(String::new, |failure| time(&failure.at)),
            figures,
        })
        .collect();
    page(
        StatusCode::OK,
        &OverviewPage {
            frame: Frame::new(&console, &viewer, "Overview", "overview"),
            runs: hooks.iter().map(|hook| hook.figures.runs).sum(),
            failures: hooks.iter().map(|hook| hook.figures.failures).sum(),
            hooks,
            chart_width: 24 * BAR_WIDTH,
            chart_height: CHART_HEIGHT,
        },
    )
}

fn unreadable(console: &Console, viewer: &Viewer, reason: String) -> HttpResponse {
    error_page(
        console,
        viewer,
        StatusCode::SERVICE_UNAVAILABLE,
        format!("The journal cannot be read: {reason}"),
    )
}

/// A run as a row of a table.
struct RunRow {
    run: RunRecord,
    started: String,
    duration: String,
    /// Exit code or signal.
    status: String,
}

impl RunRow {
    fn of(run: RunRecord) -> RunRow {
        RunRow {
            started: time(&run.started_at),
            duration: duration(run.duration_ms),
            status: match (run.exit_code, run.signal) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) => String::new(),
            },
            run,
        }
    }
}

#[derive(Template)]
#[template(path = "console/runs.html")]
struct RunsPage {
    frame: Frame,
    rows: Vec<RunRow>,
    hooks: Vec<String>,
    outcomes: &'static [&'static str],
    hook: String,
    outcome: String,
    msg_id: String,
    /// Whether runs name their instance (a shared journal's do).
    instances: bool,
    /// The query of the next (older) page, and of the first page, if there are such.
    older: Option<String>,
    newest: Option<String>,
}

async fn runs(
    viewer: Viewer,
    console: web::Data<Console>,
    params: web::Query<RunParams>,
) -> HttpResponse {
    let query = match params.query() {
        Ok(query) => query,
        Err(problem) => return error_page(&console, &viewer, StatusCode::BAD_REQUEST, problem),
    };
    let RunPage { runs, next } = match console.dispatcher.deliveries().runs(query.clone()).await {
        Ok(page) => page,
        Err(reason) => return unreadable(&console, &viewer, reason),
    };
    let config = console.dispatcher.config();
    let filters = |before: Option<i64>| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("hook", &params.hook),
            ("outcome", &params.outcome),
            ("msg_id", &params.msg_id),
            ("limit", &params.limit),
        ] {
            if let Some(value) = value.as_ref().filter(|value| !value.is_empty()) {
                query.append_pair(key, value);
            }
        }
        if let Some(before) = before {
            query.append_pair("before", &before.to_string());
        }
        query.finish()
    };
    page(
        StatusCode::OK,
        &RunsPage {
            frame: Frame::new(&console, &viewer, "Deliveries", "runs"),
            instances: runs.iter().any(|run| run.instance.is_some()),
            rows: runs.into_iter().map(RunRow::of).collect(),
            hooks: config.hooks.iter().map(|hook| hook.name.clone()).collect(),
            outcomes: OUTCOMES,
            hook: query.hook.unwrap_or_default(),
            outcome: query.outcome.unwrap_or_default(),
            msg_id: query.msg_id.unwrap_or_default(),
            older: next.map(|next| filters(Some(next))),
            newest: query.before.map(|_| filters(None)),
        },
    )
}

#[derive(Template)]
#[template(path = "console/run.html")]
struct RunPageTemplate {
    frame: Frame,
    row: RunRow,
    output: String,
}

async fn run(viewer: Viewer, console: web::Data<Console>, id: web::Path<String>) -> HttpResponse {
    let missing = || format!("There is no run {id} in the journal.");
    let Ok(number) = id.parse::<i64>() else {
        return error_page(&console, &viewer, StatusCode::NOT_FOUND, missing());
    };
    match console.dispatcher.deliveries().run(number).await {
        Ok(Some(mut run)) => {
            let output = run.output.take().unwrap_or_default();
            page(
                StatusCode::OK,
                &RunPageTemplate {
                    frame: Frame::new(&console, &viewer, &format!("Run {number}"), "runs"),
                    row: RunRow::of(run),
                    output,
                },
            )
        }
        Ok(None) => error_page(&console, &viewer, StatusCode::NOT_FOUND, missing()),
        Err(reason) => unreadable(&console, &viewer, reason),
    }
}

/// A dead letter as a row.
struct DeadRow {
    dead: DeadLetter,
    died: String,
}

#[derive(Template)]
#[template(path = "console/dead.html")]
struct DeadPage {
    frame: Frame,
    rows: Vec<DeadRow>,
}

async fn dead(viewer: Viewer, console: web::Data<Console>) -> HttpResponse {
    match console
        .dispatcher
        .deliveries()
        .dead_letters(DEAD_LIMIT)
        .await
    {
        Ok(dead) => page(
            StatusCode::OK,
            &DeadPage {
                frame: Frame::new(&console, &viewer, "Dead letters", "dead"),
                rows: dead
                    .into_iter()
                    .map(|dead| DeadRow {
                        died: time(&dead.died_at),
                        dead,
                    })
                    .collect(),
            },
        ),
        Err(reason) => unreadable(&console, &viewer, reason),
    }
}

#[derive(Deserialize)]
struct ReplayForm {
    msg_id: String,
    hook: String,
    #[serde(default)]
    csrf: Option<String>,
}

async fn replay(
    viewer: Viewer,
    console: web::Data<Console>,
    form: web::Form<ReplayForm>,
) -> HttpResponse {
    if let Some(forbidden) = refuse_csrf(&console, &viewer, form.csrf.as_deref()) {
        return forbidden;
    }
    match console
        .replay(&viewer, &form.msg_id, Some(&form.hook))
        .await
    {
        Replay::Ran(results) => match results.iter().find_map(|ran| ran.run_id) {
            Some(run) => see_other(&format!("/runs/{run}")),
            None => {
                let reason = results
                    .iter()
                    .find_map(|ran| ran.error.clone())
                    .unwrap_or_else(|| "the replay's run is not in the journal yet".to_owned());
                error_page(
                    &console,
                    &viewer,
                    StatusCode::CONFLICT,
                    format!("Not replayed: {reason}"),
                )
            }
        },
        Replay::Refused(status, why) => error_page(&console, &viewer, status, why),
    }
}

async fn not_found(viewer: Viewer, req: HttpRequest, console: web::Data<Console>) -> HttpResponse {
    error_page(
        &console,
        &viewer,
        StatusCode::NOT_FOUND,
        format!("There is no page at {}.", req.path()),
    )
}

/// An RFC 3339 time as the pages show it: `2026-12-07 13:26:08 UTC`.
fn time(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..19)) {
        (Some(date), Some(time)) => format!("{date} {time}"),
        _ => rfc3339.to_owned(),
    }
}

/// Milliseconds as the pages show them: `840 ms`, `12.3 s`, `4 m 05 s`.
fn duration(ms: Option<u64>) -> String {
    match ms {
        None => "–".to_owned(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{} m {:02} s", ms / 60_000, ms / 1000 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_read_as_an_operator_expects() {
        assert_eq!(duration(None), "–");
        assert_eq!(duration(Some(840)), "840 ms");
        assert_eq!(duration(Some(12_345)), "12.3 s");
        assert_eq!(duration(Some(245_000)), "4 m 05 s");
        assert_eq!(time("2026-12-07T13:26:08.123Z"), "2026-12-07 13:26:08");
    }

    #[test]
    fn the_busiest_hour_fills_the_chart_and_a_lone_run_still_shows() {
        let hour = |successes, failures| HourFigures {
            hour: "2026-12-07T13:00:00Z".to_owned(),
            successes,
            failures,
        };
        let bars = bars(&[hour(100, 0), hour(1, 0), hour(0, 0), hour(50, 50)]);
        assert_eq!(bars[0].ok_height, CHART_HEIGHT);
        assert_eq!(bars[1].ok_height, 2);
        assert_eq!(bars[2].ok_height + bars[2].failed_height, 0);
        assert_eq!(bars[3].ok_height + bars[3].failed_height, CHART_HEIGHT);
        assert_eq!(bars[3].failed_y, 0);
        assert_eq!(bars[3].x, 3 * BAR_WIDTH);
        assert_eq!(bars[0].label, "13:00 UTC: 100 succeeded, 0 failed");
    }
}
