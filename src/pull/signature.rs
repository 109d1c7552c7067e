//! The legacy v2 queue API's request signature (CMQ-PROTOCOL.md, "Signature"): pure functions
//! from a request's method, host, path and parameters to its `Signature` value. It knows
//! nothing of HTTP; the client adds the result to the parameters it sends.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

use crate::config::SignatureMethod;

/// The text that is signed: `METHOD` + `host` + `path` + `?` + every parameter but `Signature`
/// as `key=value`, keys sorted byte-wise and joined by `&`, values raw (not URL-encoded), and
/// `_` in a key written `.`.
///
/// `host` is the `Host` header's value: the endpoint's host, with its port when the endpoint
/// has one.
pub fn string_to_sign<'a>(
    method: &str,
    host: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut params: Vec<(&str, &str)> = params
        .into_iter()
        .filter(|(key, _)| *key != "Signature")
        .collect();
    params.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut text = format!("{method}{host}{path}?");
    for (index, (key, value)) in params.into_iter().enumerate() {
        if index > 0 {
            text.push('&');
        }
        text.extend(key.chars().map(|c| if c == '_' { '.' } else { c }));
        text.push('=');
        text.push_str(value);
    }
    text
}

/// Base64 of the HMAC (SHA-256 or SHA-1, as `method` says) of `text` keyed with `secret_key`.
pub fn sign(method: SignatureMethod, secret_key: &str, text: &str) -> String {
    let algorithm = match method {
        SignatureMethod::HmacSha256 => hmac::HMAC_SHA256,
        // The API's own choice, not ours: SHA-1 is what HmacSHA1 means.
        SignatureMethod::HmacSha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
    };
    let key = hmac::Key::new(algorithm, secret_key.as_bytes());
    STANDARD.encode(hmac::sign(&key, text.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published vector (CMQ-PROTOCOL.md), its parameters as a client holds them.
    const VECTOR_PARAMS: &[(&str, &str)] = &[
        ("Action", "SendMessage"),
        ("queueName", "test1"),
        ("msgBody", "msg"),
        ("delaySeconds", "0"),
        ("clientRequestId", "1231231231"),
        ("SecretId", "AKIDPcYDclDJCn8D0Xypa4f3pKYUCVYLn3zT"),
        ("Nonce", "2889712707386595659"),
        ("Timestamp", "1534154812"),
        ("SignatureMethod", "HmacSHA1"),
        ("RequestClient", "SDK_Python_1.3"),
    ];
    const VECTOR_KEY: &str = "pPgfLipfEXZ7VcRzhAMIyPaU7UbQyFFx";
    const VECTOR_TEXT: &str = "POSTcmq-queue-gz.api.tencentyun.com/v2/index.php?Action=SendMessage&Nonce=2889712707386595659&RequestClient=SDK_Python_1.3&SecretId=AKIDPcYDclDJCn8D0Xypa4f3pKYUCVYLn3zT&SignatureMethod=HmacSHA1&Timestamp=1534154812&clientRequestId=1231231231&delaySeconds=0&msgBody=msg&queueName=test1";

    #[test]
    fn the_published_hmac_sha1_vector_is_signed_as_published() {
        let text = string_to_sign(
            "POST",
            "cmq-queue-gz.api.tencentyun.com",
            "/v2/index.php",
            VECTOR_PARAMS.iter().copied(),
        );
        assert_eq!(text, VECTOR_TEXT);
        assert_eq!(
            sign(SignatureMethod::HmacSha1, VECTOR_KEY, &text),
            "C16WEtEXsD5v5tnaUMLAbZewXhI="
        );
    }

    #[test]
    fn hmac_sha256_matches_openssl() {
        // The same request signed with HmacSHA256, computed independently:
        //   printf '%s' "$TEXT" | openssl dgst -sha256 -hmac "$VECTOR_KEY" -binary | base64
        let params = VECTOR_PARAMS.iter().map(|&(key, value)| match key {
            "SignatureMethod" => (key, "HmacSHA256"),
            _ => (key, value),
        });
        let text = string_to_sign(
            "POST",
            "cmq-queue-gz.api.tencentyun.com",
            "/v2/index.php",
            params,
        );
        assert_eq!(
            text,
            VECTOR_TEXT.replace("SignatureMethod=HmacSHA1", "SignatureMethod=HmacSHA256")
        );
        assert_eq!(
            sign(SignatureMethod::HmacSha256, VECTOR_KEY, &text),
            "7aNNVzszJftqWPLvvnHU3lDznBYFPof7ACkTD3OJUu4="
        );
    }

    #[test]
    fn the_signature_is_left_out_values_stay_raw_and_underscores_become_dots() {
        let text = string_to_sign(
            "POST",
            "127.0.0.1:8080",
            "/v2/index.php",
            [
                ("msgBody", "a b&c=d/é"),
                ("Signature", "left out"),
                ("receipt_handle", "1"),
                ("Action", "x"),
            ],
        );
        assert_eq!(
            text,
            "POST127.0.0.1:8080/v2/index.php?Action=x&msgBody=a b&c=d/é&receipt.handle=1"
        );
    }
}
