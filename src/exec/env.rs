//! The child environment (PROTOCOL.md §11, issue 8): the user's environment minus, by rule,
//! every backend, database and gateway name, and minus everything the gateway loaded from its
//! own env files. Documented in docs/README-security.md "Child environment".

use std::ffi::{OsStr, OsString};

/// Removed from every child environment by exact name (case-insensitive), beyond the rule of
/// [`is_scrubbed`]: other services' keys the gateway's own environment may hold, and proxies
/// (they can carry the egress proxy's token).
pub const SCRUBBED_NAMES: &[&str] = &[
    "OPENROUTER_API_KEY",
    "BRAVE_SEARCH_API_KEY",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    // libpq's connection settings (a database password among them).
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSSLKEY",
    "PGSSLCERT",
    "PGSSLROOTCERT",
];

/// Names starting with one of these (case-insensitive) are the backend's or the gateway's:
/// Supabase, Panorama (the gateway's own settings included), Postgres, databases.
pub const SCRUBBED_PREFIXES: &[&str] = &["SUPABASE_", "PANORAMA_", "POSTGRES", "DATABASE_"];

/// Names containing one of these (case-insensitive) are backend or database secrets wherever
/// they appear: `MY_SERVICE_ROLE_KEY`, `AUTH_JWT_SECRET`, `DIRECT_DATABASE_URL`, …
pub const SCRUBBED_PARTS: &[&str] = &[
    "SERVICE_ROLE",
    "JWT_SECRET",
    "DATABASE_URL",
    "DB_PASSWORD",
    "DATABASE_PASSWORD",
    "DB_URL",
];

/// The names the gateway set from its env files (`--env`, `--env-file`), comma-separated, as
/// recorded by `config::envfile::load_file`. None of them reaches a child (the variable
/// itself is a `PANORAMA_*` name and is scrubbed too).
pub const ENV_FILE_NAMES_VAR: &str = "PANORAMA_GATEWAY_ENV_FILE_NAMES";

/// True when `name`, by the rule, must not reach a child: a backend, database or gateway
/// name (see [`SCRUBBED_PREFIXES`], [`SCRUBBED_PARTS`], [`SCRUBBED_NAMES`]). The providers'
/// own keys (`ANTHROPIC_API_KEY`, `OPENAI_API_KEY`, `GEMINI_API_KEY`, cloud credentials such
/// as `AWS_*` or `GOOGLE_APPLICATION_CREDENTIALS`) and the ordinary environment (`PATH`,
/// `HOME`, `GEMINI_CLI_TRUST_WORKSPACE`, …) match none of these and are kept.
pub fn is_scrubbed(name: &OsStr) -> bool {
    let upper = name.to_string_lossy().to_ascii_uppercase();
    SCRUBBED_PREFIXES.iter().any(|p| upper.starts_with(p))
        || SCRUBBED_PARTS.iter().any(|p| upper.contains(p))
        || SCRUBBED_NAMES.iter().any(|n| *n == upper)
}

/// The current process environment, scrubbed, with `overrides` applied last (a `None` value
/// removes the name). Order of the parent environment is kept.
pub fn child_env(overrides: &[(&str, Option<&OsStr>)]) -> Vec<(OsString, OsString)> {
    child_env_from(std::env::vars_os(), overrides)
}

/// [`child_env`] over a given environment (testable without touching the process's own):
/// names matching the rule of [`is_scrubbed`] and names the gateway loaded from its env files
/// ([`ENV_FILE_NAMES_VAR`]) are removed.
pub fn child_env_from(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    overrides: &[(&str, Option<&OsStr>)],
) -> Vec<(OsString, OsString)> {
    let vars: Vec<(OsString, OsString)> = vars.into_iter().collect();
    let from_files: Vec<String> = vars
        .iter()
        .find(|(k, _)| k.as_os_str() == OsStr::new(ENV_FILE_NAMES_VAR))
        .map(|(_, v)| {
            v.to_string_lossy()
                .split(',')
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let mut env: Vec<(OsString, OsString)> = vars
        .into_iter()
        .filter(|(k, _)| !is_scrubbed(k) && !from_files.iter().any(|n| OsStr::new(n) == k))
        .collect();
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
