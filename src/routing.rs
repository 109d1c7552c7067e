//! Which hooks a push runs: the configured hooks, indexed by their selectors.
//!
//! Depends on the config, never the reverse: [`Config`] holds the hooks and their
//! [`Selector`](crate::config::Selector)s (and what matching one means); this module builds the
//! index that finds them fast ([`Router`]), and [`RoutedConfig`] keeps a config and its index
//! together for whoever serves pushes.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::cmq::Push;
use crate::config::{Config, Hook, Pattern};

/// A configuration with its routing index, built once per load, so that a reload swaps both
/// at once. Dereferences to the [`Config`] (read-only: the index must stay the config's).
#[derive(Debug, Clone)]
pub struct RoutedConfig {
    config: Config,
    router: Router,
}

impl RoutedConfig {
    /// Indexes `config`'s hooks.
    pub fn new(config: Config) -> RoutedConfig {
        let router = Router::new(&config.hooks);
        RoutedConfig { config, router }
    }

    /// The hooks whose selectors all match `push`, in config order.
    pub fn route(&self, push: &Push) -> Vec<&Arc<Hook>> {
        self.router.route(&self.config.hooks, push)
    }
}

impl Deref for RoutedConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

/// The hooks whose selectors all match `push`, in config order, testing every hook. The
/// reference [`Router`] is checked against.
pub fn match_hooks<'a>(hooks: &'a [Arc<Hook>], push: &Push) -> Vec<&'a Arc<Hook>> {
    hooks
        .iter()
        .filter(|hook| hook.selector.matches(push))
        .collect()
}

/// Hooks indexed by their most selective selector, so that routing a push tests only the hooks
/// that can match it: a hash look-up for exact topics, subscriptions, tags and paths, one
/// [`GlobSet`] search for glob topics and subscriptions, and a scan of only the hooks with none
/// of these. Candidates are then checked with
/// [`Selector::matches`](crate::config::Selector::matches), so the result is exactly
/// [`match_hooks`]'s.
#[derive(Debug, Clone, Default)]
pub struct Router {
    by_topic: HashMap<String, Vec<usize>>,
    by_subscription: HashMap<String, Vec<usize>>,
    by_tag: HashMap<String, Vec<usize>>,
    by_path: HashMap<String, Vec<usize>>,
    /// Hooks with `from_queue`, by queue: only that queue's messages can match them.
    by_queue: HashMap<String, Vec<usize>>,
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
    /// The index of `hooks`; [`Router::route`] must be given the same slice, which
    /// [`RoutedConfig`] sees to.
    pub fn new(hooks: &[Arc<Hook>]) -> Router {
        let mut router = Router::default();
        let mut topic_globs = Vec::new();
        let mut subscription_globs = Vec::new();
        for (index, hook) in hooks.iter().enumerate() {
            let selector = &hook.selector;
            let entry = |map: &mut HashMap<String, Vec<usize>>, key: &str| {
                map.entry(key.to_owned()).or_default().push(index);
            };
            if let Some(queue) = &selector.from_queue {
                entry(&mut router.by_queue, queue);
                continue;
            }
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
                    topic_globs.push((index, lazy.glob().clone()));
                }
                (None, Some(Pattern::Glob(lazy)), None, None) => {
                    subscription_globs.push((index, lazy.glob().clone()));
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
        if let Some(queue) = &push.queue {
            lookup(&self.by_queue, queue, &mut candidates);
        }
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
    use std::path::Path;

    use bytes::Bytes;

    use super::*;
    use crate::cmq::Format;

    fn push(path: &str, topic: &str, sub: &str, tags: &[&str]) -> Push {
        Push {
            path: path.to_owned(),
            format: Format::Json,
            msg_id: Some("1".to_owned()),
            request_id: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            topic: Some(topic.to_owned()),
            subscription: Some(sub.to_owned()),
            topic_owner: None,
            publish_time: None,
            body: Bytes::new(),
            envelope: Bytes::new(),
            queue: None,
        }
    }

    #[test]
    fn the_index_finds_hooks_of_every_kind_in_config_order() {
        let text = r#"
[hooks.any]
command = "true"
[hooks.topic]
topic = "deploy"
command = "true"
[hooks.topic-glob]
topic = "dep*"
command = "true"
[hooks.sub]
subscription = "web-1"
command = "true"
[hooks.sub-glob]
subscription = "web-?"
command = "true"
[hooks.tags]
tags = ["a", "b"]
command = "true"
[hooks.path]
path = "/cmq"
command = "true"
[hooks.all]
path = "/cmq"
topic = "deploy"
subscription = "web-*"
tags = ["b"]
command = "true"
[hooks.queue]
from_queue = "deploys"
command = "true"
[hooks.queue-tags]
from_queue = "deploys"
tags = ["b"]
command = "true"
[[queue]]
name = "deploys"
endpoint = "http://127.0.0.1:1"
secret_id = "id"
secret_key = "key"
"#;
        let config = Config::parse(Path::new("/nonexistent/hooks.toml"), text, |_| None)
            .map(RoutedConfig::new)
            .expect("a valid config");
        let names = |push: &Push| -> Vec<String> {
            let routed: Vec<String> = config.route(push).iter().map(|h| h.name.clone()).collect();
            let scanned: Vec<String> = match_hooks(&config.hooks, push)
                .iter()
                .map(|h| h.name.clone())
                .collect();
            assert_eq!(routed, scanned, "{push:?}");
            routed
        };
        assert_eq!(
            names(&push("/cmq", "deploy", "web-1", &["a", "b"])),
            [
                "any",
                "topic",
                "topic-glob",
                "sub",
                "sub-glob",
                "tags",
                "path",
                "all"
            ]
        );
        assert_eq!(names(&push("/x", "other", "db", &[])), ["any"]);
        assert_eq!(
            names(&push("/x", "depot", "web-2", &["b"])),
            ["any", "topic-glob", "sub-glob", "tags"]
        );
        let message = |queue: &str, tags: &[&str]| {
            let tags = tags.iter().map(|t| t.to_string()).collect();
            Push::from_queue(queue, "m", tags, Bytes::new()).expect("a valid id")
        };
        assert_eq!(
            names(&message("deploys", &["b"])),
            ["any", "tags", "queue", "queue-tags"]
        );
        assert_eq!(names(&message("deploys", &[])), ["any", "queue"]);
        assert_eq!(names(&message("builds", &["a"])), ["any", "tags"]);
    }
}
