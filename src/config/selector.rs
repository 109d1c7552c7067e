//! A hook's selectors: which pushes it is for. Owned by the config, which checks them when it is
//! read; [`crate::routing`] indexes them to route pushes.
//!
//! Every selector a hook gives must match; an omitted one matches anything. `tags` matches if
//! the push carries any of them (CMQ FilterTag semantics). `topic` and `subscription` are exact
//! or globs, and never match a SIMPLIFIED push, whose topic and subscription are unknown.

use std::fmt;
use std::sync::OnceLock;

use globset::{Glob, GlobBuilder, GlobMatcher};

use crate::cmq::Push;

/// An exact name, or a glob with `*`, `?` and `[..]`.
#[derive(Debug, Clone)]
pub enum Pattern {
    Exact(String),
    Glob(LazyGlob),
}

/// A glob checked when the config is read, compiled to a matcher only when first used: most
/// glob hooks are found through the routing index's one `GlobSet`, so a config of thousands of
/// globs loads without compiling thousands of regexes.
#[derive(Debug, Clone)]
pub struct LazyGlob {
    glob: Glob,
    matcher: OnceLock<GlobMatcher>,
}

impl LazyGlob {
    /// The checked glob, for building a set of globs to search at once.
    pub fn glob(&self) -> &Glob {
        &self.glob
    }

    fn is_match(&self, value: &str) -> bool {
        self.matcher
            .get_or_init(|| self.glob.compile_matcher())
            .is_match(value)
    }
}

impl Pattern {
    /// Compiles `text`; only text containing `*`, `?` or `[` is a glob.
    pub fn new(text: &str) -> Result<Self, globset::Error> {
        if !text.contains(['*', '?', '[']) {
            return Ok(Pattern::Exact(text.to_owned()));
        }
        let glob = GlobBuilder::new(text).literal_separator(false).build()?;
        Ok(Pattern::Glob(LazyGlob {
            glob,
            matcher: OnceLock::new(),
        }))
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(exact) => exact == value,
            Pattern::Glob(glob) => glob.is_match(value),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(exact) => f.write_str(exact),
            Pattern::Glob(lazy) => f.write_str(lazy.glob.glob()),
        }
    }
}

/// A hook's selectors; `None` matches anything.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// Exact request path, compared with the expanded value.
    pub path: Option<String>,
    pub topic: Option<Pattern>,
    pub subscription: Option<Pattern>,
    /// Non-empty; any of them must be on the push.
    pub tags: Option<Vec<String>>,
}

impl Selector {
    /// True when no selector is given: the hook catches every push.
    pub fn is_empty(&self) -> bool {
        self.path.is_none()
            && self.topic.is_none()
            && self.subscription.is_none()
            && self.tags.is_none()
    }

    pub fn matches(&self, push: &Push) -> bool {
        let path = self.path.as_ref().is_none_or(|path| *path == push.path);
        let topic = matches_known(self.topic.as_ref(), push.topic.as_deref());
        let subscription = matches_known(self.subscription.as_ref(), push.subscription.as_deref());
        let tags = self
            .tags
            .as_ref()
            .is_none_or(|wanted| wanted.iter().any(|tag| push.tags.contains(tag)));
        path && topic && subscription && tags
    }
}

/// An unknown value (SIMPLIFIED) never matches a given pattern.
fn matches_known(pattern: Option<&Pattern>, value: Option<&str>) -> bool {
    match (pattern, value) {
        (None, _) => true,
        (Some(pattern), Some(value)) => pattern.matches(value),
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::cmq::Format;

    fn push(format: Format, topic: Option<&str>, sub: Option<&str>, tags: &[&str]) -> Push {
        Push {
            path: "/cmq".to_owned(),
            format,
            msg_id: Some("1".to_owned()),
            request_id: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            topic: topic.map(str::to_owned),
            subscription: sub.map(str::to_owned),
            topic_owner: None,
            publish_time: None,
            body: Bytes::new(),
            envelope: Bytes::new(),
        }
    }

    fn json(topic: &str, sub: &str, tags: &[&str]) -> Push {
        push(Format::Json, Some(topic), Some(sub), tags)
    }

    fn pattern(text: &str) -> Option<Pattern> {
        Some(Pattern::new(text).expect("valid glob"))
    }

    #[test]
    fn empty_selector_matches_everything() {
        let selector = Selector::default();
        assert!(selector.is_empty());
        assert!(selector.matches(&json("t", "s", &[])));
        assert!(selector.matches(&push(Format::Simplified, None, None, &[])));
    }

    #[test]
    fn every_given_selector_must_match() {
        let selector = Selector {
            path: Some("/cmq".to_owned()),
            topic: pattern("deploy"),
            subscription: pattern("web-*"),
            tags: Some(vec!["web".to_owned()]),
        };
        assert!(selector.matches(&json("deploy", "web-1", &["web"])));
        assert!(!selector.matches(&json("deploy2", "web-1", &["web"])));
        assert!(!selector.matches(&json("deploy", "db-1", &["web"])));
        assert!(!selector.matches(&json("deploy", "web-1", &["db"])));
        let mut other_path = json("deploy", "web-1", &["web"]);
        other_path.path = "/other".to_owned();
        assert!(!selector.matches(&other_path));
    }

    #[test]
    fn tags_match_any_of() {
        let selector = Selector {
            tags: Some(vec!["web".to_owned(), "all".to_owned()]),
            ..Selector::default()
        };
        assert!(selector.matches(&json("t", "s", &["x", "all"])));
        assert!(selector.matches(&json("t", "s", &["web"])));
        assert!(!selector.matches(&json("t", "s", &["x"])));
        assert!(!selector.matches(&json("t", "s", &[])));
    }

    #[test]
    fn globs_support_star_question_and_classes() {
        let glob = pattern("web-[0-9]?*").expect("pattern");
        assert!(glob.matches("web-12"));
        assert!(glob.matches("web-1x-y/z"));
        assert!(!glob.matches("web-x1"));
        assert!(!glob.matches("web-1"));
        assert!(matches!(pattern("plain"), Some(Pattern::Exact(_))));
        assert!(Pattern::new("[unclosed").is_err());
    }

    #[test]
    fn topic_or_subscription_never_match_a_simplified_push() {
        let by_topic = Selector {
            topic: pattern("*"),
            ..Selector::default()
        };
        let by_sub = Selector {
            subscription: pattern("*"),
            ..Selector::default()
        };
        let simplified = push(Format::Simplified, None, None, &["a"]);
        assert!(!by_topic.matches(&simplified));
        assert!(!by_sub.matches(&simplified));
        let by_tag = Selector {
            tags: Some(vec!["a".to_owned()]),
            ..Selector::default()
        };
        assert!(by_tag.matches(&simplified));
    }
}
