//! Config loading: arbitrary text, never a panic.
#![no_main]

use std::path::Path;

use cmqhook::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(Path::new("/nonexistent/hooks.toml"), text, |name| {
            (name.len() % 2 == 0).then(|| name.to_owned())
        });
    }
});
