//! The `SHIPTOKEN_` environment: which variables override the configuration (only those
//! naming a key), which are a hook's own (never read as configuration), and which are typos
//! (warned about, never refused).

use std::collections::BTreeSet;

use figment::providers::Env;

use super::RawConfig;
use super::raw::{self, RawWindow};

/// The prefix of environment variables that override the file (`SHIPTOKEN_ROTATION__ROTATE_AT`).
pub(super) const ENV_PREFIX: &str = "SHIPTOKEN_";

/// The variables the daemon hands to the programs it runs (a sink's `command`). They share
/// the prefix with overrides but never name a configuration key (a test checks), so a hook can
/// run `shiptoken get` with them in its environment: the CLI neither reads them as overrides
/// nor warns about them.
pub const HOOK_VARIABLES: &[&str] = &[
    "SHIPTOKEN_ACCOUNT",
    "SHIPTOKEN_SINK_PATH",
    "SHIPTOKEN_SINK_REASON",
    "SHIPTOKEN_SINK_STATUS",
];

/// The `SHIPTOKEN_` variables that override the configuration: only those naming a key. Any
/// other (a hook's variable, a typo) is left out of the configuration, so it cannot stop a
/// command; [`Config::unknown_env_vars`] reports the typos.
pub(super) fn env_overrides() -> Env {
    let known = known_env_keys();
    Env::prefixed(ENV_PREFIX)
        .filter(move |key| known.contains(&key.as_str().to_ascii_lowercase()))
        .split("__")
}

/// Environment variables with our prefix that name no key (see [`super::Config::unknown_env_vars`]).
pub(super) fn unknown_vars() -> Vec<String> {
    let known = known_env_keys();
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with(ENV_PREFIX))
        .filter(|k| !HOOK_VARIABLES.contains(&k.as_str()))
        .filter(|k| !known.contains(&k[ENV_PREFIX.len()..].to_ascii_lowercase()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The flattened, lower-case keys that `SHIPTOKEN_<SECTION>__<KEY>[__<FIELD>]` may name, at
/// every depth. Optional tables absent from the defaults (`rotation.window`) are filled in
/// first, or their variables would be reported as typos although they work.
pub(super) fn known_env_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, value: &serde_json::Value, keys: &mut BTreeSet<String>) {
        if let serde_json::Value::Object(fields) = value {
            for (k, v) in fields {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}__{k}")
                };
                walk(&key, v, keys);
                keys.insert(key);
            }
        }
    }
    let mut every = RawConfig::default();
    every.rotation.window = Some(RawWindow {
        days: Vec::new(),
        start: String::new(),
        end: String::new(),
        timezone: raw::utc(),
    });
    every.shiphero.concurrency = Some(0);
    every.shippo.concurrency = Some(0);
    every.oauth2.concurrency = Some(0);
    let mut keys = BTreeSet::new();
    if let Ok(value) = serde_json::to_value(every) {
        walk("", &value, &mut keys);
    }
    keys
}
