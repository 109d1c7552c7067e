//! A hook's selectors: which pushes it is for, and why one is not ([`Mismatch`], for
//! `route --explain`). Owned by the config, which checks them when it is read;
//! [`crate::routing`] indexes them to route pushes.
//!
//! Every selector a hook gives must match; an omitted one matches anything. `tags` matches if
//! the push carries any of them (CMQ FilterTag semantics). `topic` and `subscription` are exact
//! or globs, and never match a SIMPLIFIED push, whose topic and subscription are unknown.
//! `from_queue` matches only the messages received from that `[[queue]]` (SPEC §11), which
//! `path`, `topic` and `subscription` never match.

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
    /// The `[[queue]]` whose messages it takes (pull mode); never a push.
    pub from_queue: Option<String>,
}

impl Selector {
    /// True when no selector is given: the hook catches every push.
    pub fn is_empty(&self) -> bool {
        self.path.is_none()
            && self.topic.is_none()
            && self.subscription.is_none()
            && self.tags.is_none()
            && self.from_queue.is_none()
    }

    /// Whether every selector given matches `push`.
    pub fn matches(&self, push: &Push) -> bool {
        self.explain(push).is_ok()
    }

    /// `Ok` when every selector given matches `push`, else the first that does not, in the
    /// order from_queue, path, topic, subscription, tags. Borrows and allocates nothing, so it
    /// costs what [`Selector::matches`] costs; only displaying the [`Mismatch`] formats
    /// anything.
    pub fn explain<'a>(&'a self, push: &'a Push) -> Result<(), Mismatch<'a>> {
        if let Some(wanted) = &self.from_queue
            && push.queue.as_ref() != Some(wanted)
        {
            return Err(Mismatch::Queue {
                received: push.queue.as_deref(),
                wanted,
            });
        }
        if let Some(queue) = &push.queue {
            // A queue message has no path, topic or subscription: a hook that asks for one is
            // for pushes.
            let asked = [
                ("path", self.path.is_some()),
                ("topic", self.topic.is_some()),
                ("subscription", self.subscription.is_some()),
            ];
            if let Some((selector, _)) = asked.into_iter().find(|(_, given)| *given) {
                return Err(Mismatch::NotFromQueue { selector, queue });
            }
        }
        if let Some(wanted) = &self.path
            && *wanted != push.path
        {
            return Err(Mismatch::Path {
                pushed: &push.path,
                wanted,
            });
        }
        for (selector, pattern, value) in [
            ("topic", &self.topic, &push.topic),
            ("subscription", &self.subscription, &push.subscription),
        ] {
            let Some(wanted) = pattern else { continue };
            // An unknown value (SIMPLIFIED) never matches a given pattern.
            if value.as_deref().is_none_or(|value| !wanted.matches(value)) {
                return Err(Mismatch::Name {
                    selector,
                    pushed: value.as_deref(),
                    wanted,
                });
            }
        }
        if let Some(wanted) = &self.tags
            && !wanted.iter().any(|tag| push.tags.contains(tag))
        {
            return Err(Mismatch::Tags {
                pushed: &push.tags,
                wanted,
            });
        }
        Ok(())
    }
}

/// The first selector of a hook that a push fails, as [`Selector::explain`] finds it. Its
/// `Display` is the reason, e.g. `topic "build" does not match "deploy-*"`; a secret `path`
/// shows as it was expanded, so whoever prints it redacts it.
#[derive(Debug, Clone, Copy)]
pub enum Mismatch<'a> {
    Path {
        pushed: &'a str,
        wanted: &'a str,
    },
    /// `topic` or `subscription`; `pushed` is `None` for a SIMPLIFIED push.
    Name {
        selector: &'static str,
        pushed: Option<&'a str>,
        wanted: &'a Pattern,
    },
    /// The push carries none of the wanted tags.
    Tags {
        pushed: &'a [String],
        wanted: &'a [String],
    },
    /// `from_queue`: a push (`received` is `None`), or a message from another queue.
    Queue {
        received: Option<&'a str>,
        wanted: &'a str,
    },
    /// A message received from `queue` meets a `path`, `topic` or `subscription` selector.
    NotFromQueue {
        selector: &'static str,
        queue: &'a str,
    },
}

impl Mismatch<'_> {
    /// The reason, with every value passed through `shown` (redaction) before it is quoted, so
    /// that a secret is hidden before escaping could change how it is spelled.
    pub fn describe<'t>(&self, shown: impl Fn(&'t str) -> std::borrow::Cow<'t, str>) -> String
    where
        Self: 't,
    {
        match *self {
            Mismatch::Path { pushed, wanted } => {
                format!("path {:?} is not {:?}", shown(pushed), shown(wanted))
            }
            Mismatch::Name {
                selector,
                pushed: None,
                wanted,
            } => format!(
                "the push has no {selector} (SIMPLIFIED), so it cannot match {:?}",
                wanted.to_string()
            ),
            Mismatch::Name {
                selector,
                pushed: Some(pushed),
                wanted,
            } => {
                let verb = match wanted {
                    Pattern::Exact(_) => "is not",
                    Pattern::Glob(_) => "does not match",
                };
                format!(
                    "{selector} {:?} {verb} {:?}",
                    shown(pushed),
                    wanted.to_string()
                )
            }
            Mismatch::Tags { pushed, wanted } => format!(
                "tags [{}] carry none of [{}]",
                pushed.join(", "),
                wanted.join(", ")
            ),
            Mismatch::Queue {
                received: None,
                wanted,
            } => format!("a push is no message from queue {wanted:?}"),
            Mismatch::Queue {
                received: Some(received),
                wanted,
            } => format!("queue {received:?} is not {wanted:?}"),
            Mismatch::NotFromQueue { selector, queue } => format!(
                "a message from queue {queue:?} has no {selector}: {selector} selects pushes"
            ),
        }
    }
}

impl fmt::Display for Mismatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(std::borrow::Cow::Borrowed))
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
            queue: None,
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
            from_queue: None,
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
    fn explain_names_the_first_selector_that_fails_and_why() {
        let selector = Selector {
            path: Some("/cmq".to_owned()),
            topic: pattern("deploy-*"),
            subscription: pattern("web"),
            tags: Some(vec!["x".to_owned(), "z".to_owned()]),
            from_queue: None,
        };
        let why = |push: &Push| selector.explain(push).map_err(|why| why.to_string());
        assert_eq!(why(&json("deploy-1", "web", &["z"])), Ok(()));
        let mut other_path = json("build", "db", &[]);
        other_path.path = "/q".to_owned();
        assert_eq!(
            why(&other_path),
            Err(r#"path "/q" is not "/cmq""#.to_owned())
        );
        assert_eq!(
            why(&json("build", "db", &[])),
            Err(r#"topic "build" does not match "deploy-*""#.to_owned())
        );
        assert_eq!(
            why(&json("deploy-1", "db", &[])),
            Err(r#"subscription "db" is not "web""#.to_owned())
        );
        assert_eq!(
            why(&json("deploy-1", "web", &["y", "w"])),
            Err("tags [y, w] carry none of [x, z]".to_owned())
        );
        assert_eq!(
            why(&push(Format::Simplified, None, None, &["x"])),
            Err(r#"the push has no topic (SIMPLIFIED), so it cannot match "deploy-*""#.to_owned())
        );
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

    fn from_queue(queue: &str, tags: &[&str]) -> Push {
        let tags = tags.iter().map(|t| t.to_string()).collect();
        Push::from_queue(queue, "m1", tags, Bytes::from_static(b"x")).expect("a valid id")
    }

    #[test]
    fn from_queue_matches_only_that_queue_and_never_a_push() {
        let selector = Selector {
            from_queue: Some("deploys".to_owned()),
            ..Selector::default()
        };
        assert!(!selector.is_empty());
        assert!(selector.matches(&from_queue("deploys", &[])));
        let why = |push: &Push| selector.explain(push).map_err(|why| why.to_string());
        assert_eq!(
            why(&from_queue("builds", &[])),
            Err(r#"queue "builds" is not "deploys""#.to_owned())
        );
        assert_eq!(
            why(&push(Format::Simplified, None, None, &[])),
            Err(r#"a push is no message from queue "deploys""#.to_owned())
        );
        assert!(!selector.matches(&json("deploys", "deploys", &[])));
        let with_tags = Selector {
            tags: Some(vec!["web".to_owned()]),
            ..selector
        };
        assert!(with_tags.matches(&from_queue("deploys", &["web", "x"])));
        assert!(!with_tags.matches(&from_queue("deploys", &["db"])));
    }

    #[test]
    fn path_topic_and_subscription_never_match_a_queue_message() {
        for (selector, name) in [
            (
                Selector {
                    path: Some("queue:deploys".to_owned()),
                    ..Selector::default()
                },
                "path",
            ),
            (
                Selector {
                    topic: pattern("*"),
                    ..Selector::default()
                },
                "topic",
            ),
            (
                Selector {
                    subscription: pattern("*"),
                    ..Selector::default()
                },
                "subscription",
            ),
        ] {
            let message = from_queue("deploys", &[]);
            assert_eq!(
                selector.explain(&message).map_err(|why| why.to_string()),
                Err(format!(
                    "a message from queue \"deploys\" has no {name}: {name} selects pushes"
                ))
            );
        }
        // Selectors a queue message can meet: none, or tags.
        assert!(Selector::default().matches(&from_queue("deploys", &[])));
    }
}
