//! The config file's shapes as serde reads them, before any meaning is checked: unknown
//! keys and wrong types are refused here (toml's message then shows the line and the key),
//! with messages of our own for durations and whole numbers.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) run_root: Option<String>,
    pub(super) defaults: Option<RawDefaults>,
    pub(super) email: Option<RawEmail>,
    pub(super) store: Option<RawStore>,
    #[serde(default)]
    pub(super) tasks: BTreeMap<String, RawTask>,
    #[serde(default)]
    pub(super) groups: BTreeMap<String, RawGroup>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) success_cooldown: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) fail_cooldown: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) non_recoverable_downtime: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) stop_grace: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) kill_grace: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) keep_runs_for: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    pub(super) keep_runs_max: Option<i64>,
    pub(super) keep_output: Option<SizeValue>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum SizeValue {
    Int(i64),
    Text(String),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTask {
    pub(super) command: Option<String>,
    pub(super) argv: Option<Vec<String>>,
    pub(super) cwd: Option<String>,
    pub(super) env: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "whole_number")]
    pub(super) nice: Option<i64>,
    pub(super) group: Option<String>,
    // Any [defaults] key may be set per task.
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) success_cooldown: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) fail_cooldown: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) non_recoverable_downtime: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) stop_grace: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) kill_grace: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) keep_runs_for: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    pub(super) keep_runs_max: Option<i64>,
    pub(super) keep_output: Option<SizeValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    #[serde(deserialize_with = "whole_number_required")]
    pub(super) max_running: i64,
    /// "host" (the default) or "fleet" (needs `[store]`).
    pub(super) scope: Option<String>,
}

/// `[store]`: the fleet's PostgreSQL store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) url: String,
    pub(super) password_file: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) tls: Option<String>,
    pub(super) ca_file: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub(super) lease: Option<String>,
    pub(super) host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEmail {
    pub(super) to: Vec<String>,
    pub(super) from: Option<String>,
    pub(super) smtp: Option<String>,
    pub(super) tls: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) sendmail: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    pub(super) max_alerts_per_hour: Option<i64>,
}

/// A duration key's value: a string (read by [`super::parse_duration`] later). A bare number is
/// refused here with a message that says what to write instead (serde's own said only
/// "expected a string").
fn duration_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration in quotes, such as \"30s\", \"15m\" or \"1h\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_str(V).map(Some)
}

struct WholeNumber;

impl serde::de::Visitor<'_> for WholeNumber {
    type Value = i64;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a whole number, without quotes")
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
    }
}

/// A count or a number key's value (serde's own message said "expected i64").
fn whole_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<i64>, D::Error> {
    d.deserialize_i64(WholeNumber).map(Some)
}

fn whole_number_required<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<i64, D::Error> {
    d.deserialize_i64(WholeNumber)
}
