//! The config as written: serde structs, every field optional, spans kept for diagnostics.

use std::time::Duration;

use bytesize::ByteSize;
use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

use super::{StdinMode, Unmatched};
use crate::cmq::FormatSetting;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) format: Option<FormatSetting>,
    pub(super) max_body: Option<Spanned<ByteSize>>,
    pub(super) max_running: Option<Spanned<usize>>,
    pub(super) respond_within: Option<RawDuration>,
    pub(super) unmatched: Option<Unmatched>,
    pub(super) journal: Option<Spanned<String>>,
    pub(super) dedup_for: Option<RawDuration>,
    pub(super) dedup_capacity: Option<Spanned<usize>>,
    pub(super) shutdown_grace: Option<RawDuration>,
    pub(super) token: Option<Spanned<String>>,
    pub(super) allow: Option<Vec<Spanned<String>>>,
    pub(super) trusted_proxies: Option<Vec<Spanned<String>>>,
    pub(super) instance: Option<Spanned<String>>,
    pub(super) lease: Option<Spanned<RawDuration>>,
}

pub(super) type RawDuration = humantime_serde::Serde<Duration>;

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    pub(super) path: Option<Spanned<String>>,
    pub(super) topic: Option<Spanned<String>>,
    pub(super) subscription: Option<Spanned<String>>,
    pub(super) tags: Option<Spanned<Vec<String>>>,
    pub(super) command: Option<Spanned<String>>,
    pub(super) argv: Option<Spanned<Vec<String>>>,
    pub(super) workdir: Option<Spanned<String>>,
    pub(super) env: Option<IndexMap<String, String>>,
    pub(super) pass_env: Option<Vec<String>>,
    pub(super) stdin: Option<StdinMode>,
    pub(super) timeout: Option<RawDuration>,
    pub(super) kill_grace: Option<RawDuration>,
    pub(super) concurrency: Option<usize>,
    pub(super) queue: Option<usize>,
}
