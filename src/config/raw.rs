//! The config as written: serde structs, every field optional, spans kept for diagnostics.
//! The loader reads a table key by key (so that each bad key gets a diagnostic of its own), and
//! [`keys_of`] tells it which keys a struct takes.

use std::time::Duration;

use bytesize::ByteSize;
use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use toml::Spanned;

use super::{Ack, NotifyEvent, SignatureMethod, StdinMode, Unmatched};
use crate::cmq::FormatSetting;
use crate::runner::LogLines;

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
    pub(super) keep_dead: Option<RawDuration>,
    pub(super) keep_bodies: Option<Spanned<String>>,
    pub(super) log_output: Option<RawLogOutput>,
    pub(super) keep_output: Option<Spanned<ByteSize>>,
}

/// `log_output` as written: a number of lines, or `"all"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawLogOutput(pub(super) LogLines);

impl<'de> Deserialize<'de> for RawLogOutput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Lines;
        impl Visitor<'_> for Lines {
            type Value = RawLogOutput;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of lines (0: none) or \"all\"")
            }

            fn visit_u64<E: de::Error>(self, lines: u64) -> Result<RawLogOutput, E> {
                Ok(RawLogOutput(LogLines::Lines(lines)))
            }

            fn visit_i64<E: de::Error>(self, lines: i64) -> Result<RawLogOutput, E> {
                u64::try_from(lines)
                    .map(|lines| RawLogOutput(LogLines::Lines(lines)))
                    .map_err(|_| {
                        E::custom(format!(
                            "`{lines}` is negative: write a number of lines (0: none) or \"all\""
                        ))
                    })
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawLogOutput, E> {
                match text {
                    "all" => Ok(RawLogOutput(LogLines::All)),
                    other => Err(E::custom(format!(
                        "`{other}` is not a number of lines: write one (0: none) or \"all\""
                    ))),
                }
            }
        }
        deserializer.deserialize_any(Lines)
    }
}

/// `[notify]` (SPEC §10).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) command: Option<Spanned<String>>,
    pub(super) on: Option<Spanned<Vec<NotifyEvent>>>,
    pub(super) timeout: Option<Spanned<RawDuration>>,
}

/// `[console]` (SPEC §10).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsole {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) token: Option<Spanned<String>>,
}

/// A duration as written: a human string (`"500ms"`, `"15s"`, `"1d 2h"`). One that cannot be
/// read says how to write it: a bare number gets the same number with a unit as an example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawDuration(Duration);

impl RawDuration {
    pub(super) fn into_inner(self) -> Duration {
        self.0
    }
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Human;
        impl Visitor<'_> for Human {
            type Value = RawDuration;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"20s\", \"500ms\", \"10m\" or \"1d 2h\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawDuration, E> {
                humantime::parse_duration(text)
                    .map(RawDuration)
                    .map_err(|err| E::custom(duration_error(text, &err)))
            }
        }
        deserializer.deserialize_str(Human)
    }
}

/// Why `text` is no duration, with an example of one.
pub(super) fn duration_error(text: &str, err: &humantime::DurationError) -> String {
    let number = text.trim();
    if !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()) {
        format!(
            "`{text}` has no unit: write a duration such as \"{number}s\" (units: ms, s, m, h, d)"
        )
    } else {
        format!(
            "`{text}` is not a duration ({err}): write one such as \"20s\", \"500ms\", \"10m\" or \"1d 2h\""
        )
    }
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    pub(super) path: Option<Spanned<String>>,
    pub(super) topic: Option<Spanned<String>>,
    pub(super) subscription: Option<Spanned<String>>,
    pub(super) tags: Option<Spanned<Vec<String>>>,
    pub(super) from_queue: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<String>>,
    pub(super) argv: Option<Spanned<Vec<String>>>,
    pub(super) workdir: Option<Spanned<String>>,
    pub(super) env: Option<IndexMap<String, String>>,
    pub(super) pass_env: Option<Vec<String>>,
    pub(super) stdin: Option<StdinMode>,
    pub(super) timeout: Option<Spanned<RawDuration>>,
    pub(super) kill_grace: Option<RawDuration>,
    pub(super) concurrency: Option<usize>,
    pub(super) queue: Option<usize>,
    pub(super) ack: Option<Spanned<Ack>>,
    pub(super) retry: Option<Spanned<Vec<RawDuration>>>,
    pub(super) log_output: Option<RawLogOutput>,
    pub(super) keep_output: Option<Spanned<ByteSize>>,
}

/// One `[[queue]]` table.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub(super) name: Option<Spanned<String>>,
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) secret_id: Option<Spanned<String>>,
    pub(super) secret_key: Option<Spanned<String>>,
    pub(super) token: Option<Spanned<String>>,
    pub(super) signature: Option<SignatureMethod>,
    pub(super) wait: Option<Spanned<RawDuration>>,
    pub(super) batch: Option<Spanned<usize>>,
    pub(super) pollers: Option<Spanned<usize>>,
}

/// The keys `T` takes, in declaration order: the field names serde's derive hands to
/// `deserialize_struct`, so that they cannot drift from the struct. Empty if `T` is no struct.
pub(super) fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut keys: &'static [&'static str] = &[];
    // The derive asks for a struct first thing; the error returned then ends it.
    let _ = T::deserialize(KeyNames(&mut keys));
    keys
}

/// A deserializer that only records the field names it is asked for.
struct KeyNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for KeyNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("only the field names were wanted"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}
