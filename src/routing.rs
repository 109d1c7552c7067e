//! Which hooks a push runs: pure functions from a [`Push`] and the configured hooks.
//!
//! Every selector a hook gives must match; an omitted one matches anything. `tags` matches if
//! the push carries any of them (CMQ FilterTag semantics). `topic` and `subscription` are exact
//! or globs, and never match a SIMPLIFIED push, whose topic and subscription are unknown.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

use crate::cmq::Push;
use crate::config::Hook;

/// An exact name, or a glob with `*`, `?` and `[..]`.
#[derive(Debug, Clone)]
pub enum Pattern {
    Exact(String),
    Glob(LazyGlob),
}

/// A glob checked when the config is read, compiled to a matcher only when first used: most
/// glob hooks are found through [`Router`]'s one [`GlobSet`], so a config of thousands of globs
/// loads without compiling thousands of regexes.
#[derive(Debug, Clone)]
pub struct LazyGlob {
    glob: Glob,
    matcher: OnceLock<GlobMatcher>,
}

impl LazyGlob {
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

/// The hooks whose selectors all match `push`, in config order, testing every hook. The
/// reference [`Router`] is checked against.
pub fn match_hooks<'a, H>(hooks: &'a [H], push: &Push) -> Vec<&'a H>
where
    H: AsRef<Hook>,
{
    hooks
        .iter()
        .filter(|hook| hook.as_ref().selector.matches(push))
        .collect()
}

/// Hooks indexed by their most selective selector, so that routing a push tests only the hooks
/// that can match it: a hash look-up for exact topics, subscriptions, tags and paths, one
/// [`GlobSet`] search for glob topics and subscriptions, and a scan of only the hooks with none
/// of these. Candidates are then checked with [`Selector::matches`], so the result is exactly
/// [`match_hooks`]'s.
#[derive(Debug, Clone, Default)]
pub struct Router {
    by_topic: HashMap<String, Vec<usize>>,
    by_subscription: HashMap<String, Vec<usize>>,
    by_tag: HashMap<String, Vec<usize>>,
    by_path: HashMap<String, Vec<usize>>,
    topic_globs: GlobIndex,
    subscription_globs: GlobIndex,
    /// Hooks with no indexable selector: tested for every push.
    rest: Vec<usize>,
}

/// Glob patterns searched at once, and the hook each belongs to.
#[derive(Debug, Clone, Default)]
struct GlobIndex {
    set: GlobSet,
    hooks: Vec<usize>,
}

impl GlobIndex {
    fn build(globs: Vec<(usize, Glob)>, rest: &mut Vec<usize>) -> GlobIndex {
        let mut builder = GlobSetBuilder::new();
        for (_, glob) in &globs {
            builder.add(glob.clone());
        }
        let hooks: Vec<usize> = globs.into_iter().map(|(index, _)| index).collect();
        match builder.build() {
            Ok(set) => GlobIndex { set, hooks },
            Err(_) => {
                // Too big to search at once: test these hooks one by one instead.
                rest.extend(hooks);
                GlobIndex::default()
            }
        }
    }

    fn candidates(&self, value: &str, into: &mut Vec<usize>, scratch: &mut Vec<usize>) {
        if self.hooks.is_empty() {
            return;
        }
        self.set.matches_into(value, scratch);
        into.extend(scratch.iter().map(|&glob| self.hooks[glob]));
    }
}

impl Router {
    /// The index of `hooks`; [`Router::route`] must be given the same slice.
    pub fn new(hooks: &[Arc<Hook>]) -> Router {
        let mut router = Router::default();
        let mut topic_globs = Vec::new();
        let mut subscription_globs = Vec::new();
        for (index, hook) in hooks.iter().enumerate() {
            let selector = &hook.selector;
            let entry = |map: &mut HashMap<String, Vec<usize>>, key: &str| {
                map.entry(key.to_owned()).or_default().push(index);
            };
            // The most selective selector the hook gives decides where it is filed.
            match (
                &selector.topic,
                &selector.subscription,
                &selector.tags,
                &selector.path,
            ) {
                (Some(Pattern::Exact(topic)), ..) => entry(&mut router.by_topic, topic),
                (_, Some(Pattern::Exact(sub)), ..) => entry(&mut router.by_subscription, sub),
                (_, _, Some(tags), _) => {
                    for tag in tags {
                        entry(&mut router.by_tag, tag);
                    }
                }
                (_, _, None, Some(path)) => entry(&mut router.by_path, path),
                (Some(Pattern::Glob(lazy)), _, None, None) => {
                    topic_globs.push((index, lazy.glob.clone()));
                }
                (None, Some(Pattern::Glob(lazy)), None, None) => {
                    subscription_globs.push((index, lazy.glob.clone()));
                }
                (None, None, None, None) => router.rest.push(index),
            }
        }
        router.topic_globs = GlobIndex::build(topic_globs, &mut router.rest);
        router.subscription_globs = GlobIndex::build(subscription_globs, &mut router.rest);
        router.rest.sort_unstable();
        router
    }

    /// The hooks whose selectors all match `push`, in config order; `hooks` are the ones the
    /// router was built from.
    pub fn route<'a>(&self, hooks: &'a [Arc<Hook>], push: &Push) -> Vec<&'a Arc<Hook>> {
        let mut candidates = Vec::new();
        let mut scratch = Vec::new();
        let lookup = |map: &HashMap<String, Vec<usize>>, key: &str, into: &mut Vec<usize>| {
            if let Some(hooks) = map.get(key) {
                into.extend_from_slice(hooks);
            }
        };
        if let Some(topic) = &push.topic {
            lookup(&self.by_topic, topic, &mut candidates);
            self.topic_globs
                .candidates(topic, &mut candidates, &mut scratch);
        }
        if let Some(subscription) = &push.subscription {
            lookup(&self.by_subscription, subscription, &mut candidates);
            self.subscription_globs
                .candidates(subscription, &mut candidates, &mut scratch);
        }
        for tag in &push.tags {
            lookup(&self.by_tag, tag, &mut candidates);
        }
        lookup(&self.by_path, &push.path, &mut candidates);
        candidates.extend_from_slice(&self.rest);
        // Config order; a hook found under two of a push's tags counts once.
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .filter_map(|index| hooks.get(index))
            .filter(|hook| hook.selector.matches(push))
            .collect()
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
