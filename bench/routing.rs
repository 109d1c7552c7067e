//! Routing among many hooks: how long a config of N hooks takes to load, and what routing one
//! push costs, with the index ([`RoutedConfig::route`]) and with a test of every hook
//! ([`match_hooks`]). The hooks mix exact and glob topics, exact subscriptions, tags and paths.
//!
//! Usage: routing [HOOKS]   (default 10000)

use std::hint::black_box;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmqhook::cmq::{Format, Push};
use cmqhook::config::Config;
use cmqhook::routing::{RoutedConfig, Router, match_hooks};

fn main() -> ExitCode {
    let count: usize = match std::env::args().nth(1).map(|n| n.parse()) {
        None => 10_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: routing [HOOKS]");
            return ExitCode::from(2);
        }
    };
    let text = config_text(count);
    let file = Path::new("bench-routing.toml");

    // Load: median of 7, each from the text, as serve and SIGHUP do after reading the file.
    let mut loads = Vec::new();
    let mut config = None;
    for _ in 0..7 {
        let started = Instant::now();
        match Config::parse(file, &text, |_| None).map(RoutedConfig::new) {
            Ok(loaded) => config = Some(black_box(loaded)),
            Err(err) => {
                eprintln!("routing: the generated config is invalid:\n{err}");
                return ExitCode::FAILURE;
            }
        }
        loads.push(started.elapsed());
    }
    let Some(config) = config else {
        return ExitCode::FAILURE;
    };
    loads.sort_unstable();
    let load = loads[loads.len() / 2];
    // Of which: building the routing index, also done by every load.
    let mut indexing = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        black_box(Router::new(&config.hooks));
        indexing.push(started.elapsed());
    }
    indexing.sort_unstable();
    let index = indexing[indexing.len() / 2];

    let pushes: Vec<Push> = (0..1000).map(|i| push(count, i)).collect();
    let matched: usize = pushes.iter().map(|push| config.route(push).len()).sum();
    for push in &pushes {
        let indexed: Vec<&str> = config.route(push).iter().map(|h| h.name.as_str()).collect();
        let scanned: Vec<&str> = match_hooks(&config.hooks, push)
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        if indexed != scanned {
            eprintln!("routing: the index and the scan disagree on {push:?}");
            return ExitCode::FAILURE;
        }
    }
    let indexed = per_push(&pushes, 200, |push| config.route(push).len());
    let scanned = per_push(&pushes, 5, |push| match_hooks(&config.hooks, push).len());
    println!(
        "hooks={count} load_ms={:.1} index_ms={:.1} route_us_per_push={:.3} scan_us_per_push={:.1} hooks_matched_per_push={:.2}",
        load.as_secs_f64() * 1000.0,
        index.as_secs_f64() * 1000.0,
        indexed.as_secs_f64() * 1e6,
        scanned.as_secs_f64() * 1e6,
        matched as f64 / pushes.len() as f64,
    );
    ExitCode::SUCCESS
}

/// The mean time of `route` over `rounds` passes of `pushes`.
fn per_push(pushes: &[Push], rounds: usize, route: impl Fn(&Push) -> usize) -> Duration {
    let started = Instant::now();
    for _ in 0..rounds {
        for push in pushes {
            black_box(route(black_box(push)));
        }
    }
    started.elapsed() / u32::try_from(rounds * pushes.len()).unwrap_or(u32::MAX)
}

/// `count` hooks, in turn: exact topic (4 in 10), glob topic (2), tag (2), exact subscription
/// (1), path (1).
fn config_text(count: usize) -> String {
    let mut text = String::from("[server]\njournal = \"off\"\n");
    for i in 0..count {
        text += &format!("\n[hooks.h{i}]\nargv = [\"/bin/true\"]\n");
        text += &match i % 10 {
            0..=3 => format!("topic = \"topic-{i}\"\n"),
            4 | 5 => format!("topic = \"svc-{i}-*\"\n"),
            6 | 7 => format!("tags = [\"tag-{i}\", \"all-{}\"]\n", i % 100),
            8 => format!("subscription = \"sub-{i}\"\n"),
            _ => format!("path = \"/p/{i}\"\n"),
        };
    }
    text
}

/// Push `i` of a series that reaches hooks of every kind, spread over the whole config.
fn push(count: usize, i: usize) -> Push {
    let block = (i * 7919) % (count / 10).max(1) * 10;
    let (topic, subscription, tags, path) = match i % 5 {
        0 => (
            format!("topic-{}", block + i % 4),
            "s".to_owned(),
            vec![],
            "/".to_owned(),
        ),
        1 => (
            format!("svc-{}-eu", block + 4),
            "s".to_owned(),
            vec![],
            "/".to_owned(),
        ),
        2 => (
            "t".to_owned(),
            "s".to_owned(),
            vec![format!("tag-{}", block + 6), "other".to_owned()],
            "/".to_owned(),
        ),
        3 => (
            "t".to_owned(),
            format!("sub-{}", block + 8),
            vec![],
            "/".to_owned(),
        ),
        _ => (
            "t".to_owned(),
            "s".to_owned(),
            vec![],
            format!("/p/{}", block + 9),
        ),
    };
    Push {
        path,
        format: Format::Json,
        msg_id: Some(i.to_string()),
        request_id: None,
        tags,
        topic: Some(topic),
        subscription: Some(subscription),
        topic_owner: None,
        publish_time: None,
        body: Bytes::new(),
        envelope: Bytes::new(),
        queue: None,
    }
}
