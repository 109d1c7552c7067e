//! Property tests: arbitrary bytes and headers to the push parser, arbitrary text to the
//! config loader. Whatever comes in, nothing panics. And the routing index finds exactly the
//! hooks a test of every hook finds.

use std::path::Path;

use bytes::Bytes;
use cmqhook::cmq::{Format, FormatSetting, Push, PushHeaders, parse_push, parse_tags};
use cmqhook::config::Config;
use cmqhook::routing::{RoutedConfig, match_hooks};
use proptest::prelude::*;

/// One hook's selectors, as TOML lines: any mix of exact and glob names, tags and paths.
fn selector_lines() -> impl Strategy<Value = String> {
    let name = || {
        prop_oneof![
            Just("t1"),
            Just("t2"),
            Just("t*"),
            Just("?2"),
            Just("[tu]1")
        ]
    };
    (
        proptest::option::of(prop_oneof![Just("/a"), Just("/b")]),
        proptest::option::of(name()),
        proptest::option::of(name()),
        proptest::option::of(proptest::sample::subsequence(vec!["x", "y", "z"], 1..=2)),
        proptest::option::of(prop_oneof![Just("q1"), Just("q2")]),
    )
        .prop_map(|(path, topic, subscription, tags, queue)| {
            let mut lines = String::new();
            // `from_queue` only where the config takes it: beside no push-only selector.
            if let Some(queue) = queue.filter(|_| (path, topic, subscription) == (None, None, None))
            {
                lines += &format!("from_queue = \"{queue}\"\n");
            }
            if let Some(path) = path {
                lines += &format!("path = \"{path}\"\n");
            }
            if let Some(topic) = topic {
                lines += &format!("topic = \"{topic}\"\n");
            }
            if let Some(subscription) = subscription {
                lines += &format!("subscription = \"{subscription}\"\n");
            }
            if let Some(tags) = tags {
                lines += &format!("tags = {tags:?}\n");
            }
            lines
        })
}

fn routed_push() -> impl Strategy<Value = Push> {
    let name = || prop_oneof![Just("t1"), Just("t2"), Just("u1"), Just("zz")];
    (
        prop_oneof![Just("/a"), Just("/b"), Just("/c")],
        proptest::option::of((name(), name())),
        proptest::sample::subsequence(vec!["x", "y", "z", "w"], 0..=3),
        proptest::option::of(prop_oneof![Just("q1"), Just("q2")]),
    )
        .prop_map(|(path, names, tags, queue)| match queue {
            Some(queue) => {
                let tags = tags.into_iter().map(str::to_owned).collect();
                Push::from_queue(queue, "1", tags, Bytes::new()).expect("a valid id")
            }
            None => Push {
                path: path.to_owned(),
                format: if names.is_some() {
                    Format::Json
                } else {
                    Format::Simplified
                },
                msg_id: Some("1".to_owned()),
                request_id: None,
                tags: tags.into_iter().map(str::to_owned).collect(),
                topic: names.map(|(topic, _)| topic.to_owned()),
                subscription: names.map(|(_, subscription)| subscription.to_owned()),
                topic_owner: None,
                publish_time: None,
                body: Bytes::new(),
                envelope: Bytes::new(),
                queue: None,
            },
        })
}

fn setting() -> impl Strategy<Value = FormatSetting> {
    prop_oneof![
        Just(FormatSetting::Auto),
        Just(FormatSetting::Json),
        Just(FormatSetting::Simplified)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn push_parsing_never_panics(
        setting in setting(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        id in proptest::option::of(".{0,40}"),
        request in proptest::option::of(".{0,40}"),
        tags in proptest::option::of(".{0,80}"),
    ) {
        let headers = PushHeaders {
            message_id: id.as_deref(),
            request_id: request.as_deref(),
            message_tag: tags.as_deref(),
        };
        if let Ok(push) = parse_push(setting, "/p", headers, Bytes::from(body.clone())) {
            prop_assert!(push.tags.iter().all(|tag| !tag.is_empty() && !tag.contains(',')));
            if setting == FormatSetting::Simplified {
                prop_assert_eq!(&push.body[..], &body[..]);
            }
        }
    }

    #[test]
    fn json_shaped_bodies_never_panic(
        setting in setting(),
        msg_id in prop_oneof![Just("\"1\"".to_owned()), Just("1".to_owned()), Just("null".to_owned()), "[-0-9.e]{1,12}"],
        msg_body in prop_oneof![".{0,30}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()), Just("{}".to_owned()), Just("5".to_owned())],
        owner in prop_oneof![Just("1e400".to_owned()), Just("-1".to_owned()), Just("\"x\"".to_owned()), Just("true".to_owned())],
    ) {
        let body = format!(
            r#"{{"TopicOwner":{owner},"topicName":"t","subscriptionName":"s","msgId":{msg_id},"msgBody":{msg_body},"publishTime":{owner}}}"#
        );
        let headers = PushHeaders { message_id: Some("1"), ..PushHeaders::default() };
        let _ = parse_push(setting, "/", headers, Bytes::from(body));
    }

    #[test]
    fn tag_parsing_is_normalised(header in ".{0,100}") {
        for tag in parse_tags(&header) {
            prop_assert!(!tag.is_empty());
            prop_assert_eq!(tag.trim_matches([' ', '\t']), tag.as_str());
        }
    }

    #[test]
    fn config_loading_never_panics(text in "(\\PC|\n){0,300}") {
        let _ = Config::parse(Path::new("/nonexistent/hooks.toml"), &text, |_| None);
    }

    #[test]
    fn toml_shaped_configs_never_panic(
        key in "(listen|format|max_body|timeout|path|topic|tags|argv|command|token|allow|journal)",
        value in "(\"[^\"\n]{0,20}\"|[0-9]{1,20}|\\[\\]|\\[\"[a-z$*{}]{0,8}\"\\]|true|\\{\\})",
    ) {
        for section in ["[server]", "[defaults]", "[hooks.h]"] {
            let text = format!("{section}\n{key} = {value}\n");
            let _ = Config::parse(Path::new("/nonexistent/hooks.toml"), &text, |_| Some("$".to_owned()));
        }
    }

    #[test]
    fn the_routing_index_finds_what_testing_every_hook_finds(
        selectors in proptest::collection::vec(selector_lines(), 0..12),
        pushes in proptest::collection::vec(routed_push(), 1..8),
    ) {
        let mut text = String::new();
        for (index, lines) in selectors.iter().enumerate() {
            text += &format!("[hooks.h{index}]\nargv = [\"/bin/true\"]\n{lines}");
        }
        // The queues `from_queue` may name.
        for queue in ["q1", "q2"] {
            text += &format!(
                "[[queue]]\nname = \"{queue}\"\nendpoint = \"http://127.0.0.1:1\"\nsecret_id = \"i\"\nsecret_key = \"k\"\n"
            );
        }
        let config = Config::parse(Path::new("/nonexistent/hooks.toml"), &text, |_| None)
            .map(RoutedConfig::new)
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        for push in &pushes {
            let names = |hooks: Vec<&std::sync::Arc<cmqhook::config::Hook>>| -> Vec<String> {
                hooks.iter().map(|hook| hook.name.clone()).collect()
            };
            prop_assert_eq!(names(config.route(push)), names(match_hooks(&config.hooks, push)));
        }
    }
}
