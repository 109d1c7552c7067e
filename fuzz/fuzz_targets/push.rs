//! Push parsing from raw header bytes: the first byte chooses the format, the bytes up to the
//! first NUL are the three CMQ headers (separated by `\n`, each one's lines by `\r`), in any
//! bytes, UTF-8 or not; the rest is the body.
#![no_main]

use bytes::Bytes;
use cmqhook::cmq::{FormatSetting, MAX_MESSAGE_ID, PushHeaders, header_text, parse_push};
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
    let (head, body) = match rest.iter().position(|&b| b == 0) {
        Some(nul) => (&rest[..nul], &rest[nul + 1..]),
        None => (&rest[..0], rest),
    };
    let mut headers = head.split(|&b| b == b'\n').map(|header| {
        // An empty header is an absent one; otherwise each `\r` starts another line.
        let lines = (!header.is_empty()).then(|| header.split(|&b| b == b'\r'));
        header_text(lines.into_iter().flatten())
    });
    let (Some(id), Some(request), Some(tag)) = (headers.next(), headers.next(), headers.next())
    else {
        return;
    };
    // Headers that are not UTF-8 are refused before parsing (400); that must be all they do.
    let (Ok(id), Ok(request), Ok(tag)) = (id, request, tag) else {
        return;
    };
    let headers = PushHeaders {
        message_id: id.as_deref(),
        request_id: request.as_deref(),
        message_tag: tag.as_deref(),
    };
    if let Ok(push) = parse_push(setting, "/", headers, Bytes::copy_from_slice(body)) {
        // Whatever is accepted can be passed to a command and journaled.
        if let Some(id) = &push.msg_id {
            assert!(id.len() <= MAX_MESSAGE_ID && !id.chars().any(char::is_control));
        }
    }
});
