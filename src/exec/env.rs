//! The child environment (PROTOCOL.md §11): the user's environment minus the gateway's own
//! secrets and settings.

use std::ffi::{OsStr, OsString};

/// Removed from every child environment, exactly (case-sensitive).
pub const SCRUBBED_NAMES: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_CA_CERT",
    "SUPABASE_URL",
    "SUPABASE_ANON_KEY",
    "SUPABASE_PUBLISHABLE_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_SECRET_KEY",
    "PANORAMA_SUPABASE_URL",
    "PANORAMA_SUPABASE_ANON_KEY",
    "PANORAMA_EGRESS_PROXY_TOKEN",
    "PANORAMA_EGRESS_PROXY_HOST",
    "PANORAMA_ENV",
    "PANORAMA_ENV_FILE",
    "PANORAMA_ENV_PATH",
    "OPENROUTER_API_KEY",
    "BRAVE_SEARCH_API_KEY",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
];

/// Every name starting with this is removed too.
pub const SCRUBBED_PREFIX: &str = "PANORAMA_GATEWAY_";

/// True when `name` must not reach a child.
pub fn is_scrubbed(name: &OsStr) -> bool {
    let bytes = name.as_encoded_bytes();
    bytes.starts_with(SCRUBBED_PREFIX.as_bytes())
        || SCRUBBED_NAMES.iter().any(|n| n.as_bytes() == bytes)
}

/// The current process environment, scrubbed, with `overrides` applied last (a `None` value
/// removes the name). Order of the parent environment is kept.
pub fn child_env(overrides: &[(&str, Option<&OsStr>)]) -> Vec<(OsString, OsString)> {
    child_env_from(std::env::vars_os(), overrides)
}

/// [`child_env`] over a given environment (testable without touching the process's own).
pub fn child_env_from(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    overrides: &[(&str, Option<&OsStr>)],
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> =
        vars.into_iter().filter(|(k, _)| !is_scrubbed(k)).collect();
    for (k, v) in overrides {
        env.retain(|(name, _)| name.as_os_str() != OsStr::new(k));
        if let Some(v) = v {
            env.push((OsString::from(k), v.to_os_string()));
        }
    }
    env
}

/// Sets (or replaces) `name` in an environment list.
pub fn set_var(env: &mut Vec<(OsString, OsString)>, name: &str, value: impl Into<OsString>) {
    env.retain(|(k, _)| k.as_os_str() != OsStr::new(name));
    env.push((OsString::from(name), value.into()));
}

/// The value of `name` in an environment list.
pub fn get_var<'a>(env: &'a [(OsString, OsString)], name: &str) -> Option<&'a OsStr> {
    env.iter()
        .find(|(k, _)| k.as_os_str() == OsStr::new(name))
        .map(|(_, v)| v.as_os_str())
}
