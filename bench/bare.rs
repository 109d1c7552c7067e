//! The HTTP floor: a bare actix-web handler that runs the command for every POST, feeds it
//! the body, and answers 200 if it exited 0. No routing, dedup, journal, process group or
//! logging. `bench/run.sh` measures it beside cmqhook to show what the HTTP server and the
//! load generator cost on their own.
//!
//! By default the command's stdout and stderr are `/dev/null`. With `--piped` they are pipes
//! that the handler drains to their end while it writes stdin, as any runner that keeps or
//! logs output must (issue 25: the fair comparison for cmqhook's own CPU a push).
//!
//! Usage: bare [--piped] ADDR COMMAND [ARG...]   (prints `listening on http://ADDR` once bound)

use std::process::{ExitCode, Stdio};

use actix_web::{App, HttpResponse, HttpServer, web};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

struct Setup {
    argv: Vec<String>,
    piped: bool,
}

async fn run(body: web::Bytes, setup: web::Data<Setup>) -> HttpResponse {
    let Some((program, args)) = setup.argv.split_first() else {
        return HttpResponse::InternalServerError().finish();
    };
    let output = || {
        if setup.piped {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(output())
        .stderr(output())
        .spawn();
    let Ok(mut child) = child else {
        return HttpResponse::InternalServerError().finish();
    };
    let stdin = child.stdin.take();
    let write = async move {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&body).await;
        }
    };
    // Read to the end and dropped, as a runner that logs output reads it.
    async fn drain(pipe: Option<impl AsyncRead + Unpin>) {
        if let Some(mut pipe) = pipe {
            let mut buffer = [0; 4096];
            while let Ok(1..) = pipe.read(&mut buffer).await {}
        }
    }
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    tokio::join!(write, drain(stdout), drain(stderr));
    match child.wait().await {
        Ok(status) if status.success() => HttpResponse::Ok().finish(),
        _ => HttpResponse::InternalServerError().finish(),
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let piped = args.first().is_some_and(|first| first == "--piped");
    if piped {
        args.remove(0);
    }
    let Some((addr, argv)) = args.split_first().filter(|(_, argv)| !argv.is_empty()) else {
        eprintln!("usage: bare [--piped] ADDR COMMAND [ARG...]");
        return ExitCode::from(2);
    };
    let setup = web::Data::new(Setup {
        argv: argv.to_vec(),
        piped,
    });
    let served = actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(setup.clone())
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
