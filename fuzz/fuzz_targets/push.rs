//! Push parsing: the first bytes choose the format and headers, the rest is the body.
#![no_main]

use bytes::Bytes;
use cmqhook::cmq::{FormatSetting, PushHeaders, parse_push};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let setting = match selector % 3 {
        0 => FormatSetting::Auto,
        1 => FormatSetting::Json,
        _ => FormatSetting::Simplified,
    };
    // Header values up to the first NUL, the body after it.
    let (head, body) = match rest.iter().position(|&b| b == 0) {
        Some(nul) => (&rest[..nul], &rest[nul + 1..]),
        None => (&rest[..0], rest),
    };
    let head = String::from_utf8_lossy(head);
    let mut parts = head.split('\n');
    let headers = PushHeaders {
        message_id: parts.next(),
        request_id: parts.next(),
        message_tag: parts.next(),
    };
    let _ = parse_push(setting, "/", headers, Bytes::copy_from_slice(body));
});
