//! The HTTP floor: a bare actix-web handler that runs the command for every POST, feeds it
//! the body, and answers 200 if it exited 0. No routing, dedup, journal, process group, output
//! capture or logging. `bench/run.sh` measures it beside cmqhook to show what the HTTP server
//! and the load generator cost on their own.
//!
//! Usage: bare ADDR COMMAND [ARG...]   (prints `listening on http://ADDR` once bound)

use std::process::{ExitCode, Stdio};

use actix_web::{App, HttpResponse, HttpServer, web};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

async fn run(body: web::Bytes, argv: web::Data<Vec<String>>) -> HttpResponse {
    let Some((program, args)) = argv.split_first() else {
        return HttpResponse::InternalServerError().finish();
    };
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return HttpResponse::InternalServerError().finish();
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body).await;
    }
    match child.wait().await {
        Ok(status) if status.success() => HttpResponse::Ok().finish(),
        _ => HttpResponse::InternalServerError().finish(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((addr, argv)) = args.split_first().filter(|(_, argv)| !argv.is_empty()) else {
        eprintln!("usage: bare ADDR COMMAND [ARG...]");
        return ExitCode::from(2);
    };
    let argv = web::Data::new(argv.to_vec());
    let served = actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(argv.clone())
                .app_data(web::PayloadConfig::new(1 << 20))
                .default_service(web::post().to(run))
        })
        .bind(addr.as_str())?;
        for bound in server.addrs() {
            eprintln!("listening on http://{bound}");
        }
        server.run().await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bare: {err}");
            ExitCode::FAILURE
        }
    }
}
