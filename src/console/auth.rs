//! Who may see the console and who may replay (SPEC §10): the `[console] token` presented as
//! `Authorization: Bearer TOKEN`, or the session cookie the login form sets; the CSRF token
//! of the replay form. Pure but for the key drawn at start; no HTTP framework here.
//!
//! The cookie never holds the token: it holds a MAC of it under a key this process drew at
//! start, so a cookie stops working when the token changes (a reload) or `serve` restarts,
//! and a leaked cookie does not leak the token. The CSRF token is a MAC of the session, so it
//! needs no server-side state either. Every comparison is constant-time.

use ring::hmac;
use subtle::ConstantTimeEq;

use crate::access::token_matches;

/// The session cookie's name.
pub const COOKIE: &str = "cmqhook_console";

/// The keys of this process's sessions and CSRF tokens.
pub struct Keys {
    key: hmac::Key,
}

/// Who is asking, once let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// Holds the token (Bearer or cookie): may replay; `session` is its session value.
    Operator { session: String },
    /// No token is configured (a loopback console): may look, never replay.
    ReadOnly,
}

/// Why a request is not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied;

impl Keys {
    /// Keys drawn from the system's random source.
    pub fn new() -> Result<Keys, ring::error::Unspecified> {
        let rng = ring::rand::SystemRandom::new();
        Ok(Keys {
            key: hmac::Key::generate(hmac::HMAC_SHA256, &rng)?,
        })
    }

    fn mac(&self, purpose: &str, value: &str) -> String {
        let tag = hmac::sign(&self.key, format!("{purpose}\0{value}").as_bytes());
        tag.as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// The session value for `token` (the cookie's value).
    pub fn session(&self, token: &str) -> String {
        self.mac("session", token)
    }

    /// The CSRF token of the replay form for `session`.
    pub fn csrf(&self, session: &str) -> String {
        self.mac("csrf", session)
    }

    /// Whether `presented` is the CSRF token of `session`.
    pub fn csrf_matches(&self, session: &str, presented: Option<&str>) -> bool {
        let expected = self.csrf(session);
        presented.is_some_and(|presented| same(&expected, presented))
    }

    /// Who presents `bearer` (the token of an `Authorization: Bearer` header) or `cookie`
    /// (the session cookie's value), with `token` configured (`None`: anyone may look).
    pub fn viewer(
        &self,
        token: Option<&str>,
        bearer: Option<&str>,
        cookie: Option<&str>,
    ) -> Result<Viewer, Denied> {
        let Some(token) = token else {
            return Ok(Viewer::ReadOnly);
        };
        let session = self.session(token);
        let by_bearer = token_matches(token, bearer);
        let by_cookie = cookie.is_some_and(|cookie| same(&session, cookie));
        if by_bearer | by_cookie {
            Ok(Viewer::Operator { session })
        } else {
            Err(Denied)
        }
    }
}

/// Whether `a` and `b` are equal, in time that depends on their lengths only.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of the cookie `name` in a `Cookie` header value.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

/// The `Set-Cookie` value of a session: HttpOnly, SameSite=Strict, for the whole console.
pub fn session_cookie(session: &str) -> String {
    format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_lets_in_by_bearer_or_by_its_session_cookie_and_nothing_else_does() {
        let keys = Keys::new().expect("keys");
        let token = Some("s3cret-token");
        let session = keys.session("s3cret-token");
        let operator = Ok(Viewer::Operator {
            session: session.clone(),
        });
        assert_eq!(keys.viewer(token, Some("s3cret-token"), None), operator);
        assert_eq!(keys.viewer(token, None, Some(&session)), operator);
        assert_eq!(keys.viewer(token, Some("wrong"), None), Err(Denied));
        assert_eq!(keys.viewer(token, None, Some("s3cret-token")), Err(Denied));
        assert_eq!(keys.viewer(token, None, None), Err(Denied));
        // A new token (a reload) ends the sessions of the old one.
        assert_eq!(
            keys.viewer(Some("new-token"), None, Some(&session)),
            Err(Denied)
        );
        // Another process's sessions are not this one's.
        let other = Keys::new().expect("keys");
        assert_eq!(other.viewer(token, None, Some(&session)), Err(Denied));
        assert_eq!(keys.viewer(None, None, None), Ok(Viewer::ReadOnly));
    }

    #[test]
    fn a_csrf_token_belongs_to_its_session() {
        let keys = Keys::new().expect("keys");
        let (a, b) = (keys.session("a-token"), keys.session("b-token"));
        assert!(keys.csrf_matches(&a, Some(&keys.csrf(&a))));
        assert!(!keys.csrf_matches(&a, Some(&keys.csrf(&b))));
        assert!(!keys.csrf_matches(&a, None));
        assert!(!keys.csrf_matches(&a, Some("")));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        assert_eq!(cookie("a=1; cmqhook_console=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie("cmqhook_consolex=1", COOKIE), None);
    }
}
