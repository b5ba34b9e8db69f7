//! Where state lives and how to reach the backend, resolved flag > environment > default.
//! Owner: Foundation (issue 2). Consumers: every command, the runtime, providers.

pub mod state;

use std::path::PathBuf;

/// The files of one gateway install. Resolved once per process by the CLI layer.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `~/.panorama/gateway` by default (0700).
    pub config_dir: PathBuf,
    /// `gateway.json` (0600).
    pub config_path: PathBuf,
    /// `gateway.log`.
    pub log_path: PathBuf,
    /// `gateway.pid` (flock'ed by the running daemon).
    pub pid_path: PathBuf,
    /// `gateway.status.json`: the daemon's runtime status, read by `status`.
    pub status_path: PathBuf,
    /// Owner-only directory for results the backend has not yet accepted.
    pub spool_dir: PathBuf,
    /// Owner-only in-flight journal: the jobs and process groups this daemon runs, so the next
    /// start can clean up after a crash.
    pub inflight_dir: PathBuf,
}

/// `--claude-cli` / `--codex-cli` / `--gemini-cli` (already merged with their env vars).
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    pub claude: Option<PathBuf>,
    pub codex: Option<PathBuf>,
    pub gemini: Option<PathBuf>,
}

/// Everything the command line and the environment said, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub paths: Paths,
    pub verbose: bool,
    /// `--device-name` > `PANORAMA_GATEWAY_DEVICE_NAME` (hostname is applied by `pair`).
    pub device_name: Option<String>,
    pub cli_overrides: CliOverrides,
    /// `--supabase-url` > `SUPABASE_URL` > `PANORAMA_SUPABASE_URL` (saved/embedded come later).
    pub supabase_url: Option<String>,
    /// `--anon-key` > `SUPABASE_ANON_KEY` > `PANORAMA_SUPABASE_ANON_KEY` > `SUPABASE_PUBLISHABLE_KEY`.
    pub anon_key: Option<String>,
    /// `--allow-insecure-http` or `PANORAMA_GATEWAY_ALLOW_INSECURE_HTTP=1`: plain `http://` to a
    /// host that is not loopback is accepted (tokens then travel in clear text).
    pub allow_insecure_http: bool,
    /// `--metrics-addr` > `PANORAMA_GATEWAY_METRICS_ADDR`: the opt-in health/metrics endpoint.
    pub metrics_addr: Option<String>,
    /// `--log-format` > `PANORAMA_GATEWAY_LOG_FORMAT`: text (default) or json lines.
    pub log_format: crate::logging::Format,
    /// `--ca-file`: extra trusted roots (PEM); `SSL_CERT_FILE` is read by backend::net.
    pub ca_file: Option<PathBuf>,
}

/// The environment twin of `--allow-insecure-http` (also how `start` hands it to the daemon).
pub const ALLOW_INSECURE_HTTP_ENV: &str = "PANORAMA_GATEWAY_ALLOW_INSECURE_HTTP";

/// The backend to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:54321`.
    pub url: String,
    pub anon_key: String,
}

pub mod envfile;
pub mod secure;

use std::ffi::OsString;
use std::path::Path;

use state::GatewayState;

/// The production backend of the published package (PROTOCOL.md §2): public values that every
/// client of it carries (the key is a publishable `role: anon` JWT, not a secret).
pub const PRODUCTION_SUPABASE_URL: &str = "https://api.panorama.app";
pub const PRODUCTION_SUPABASE_ANON_KEY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZSIsInJlZiI6ImF0aHp3Y2ZkbHVzZGpraHl4amllIiwicm9sZSI6ImFub24iLCJpYXQiOjE3NTcyNzg4ODIsImV4cCI6MjA3Mjg1NDg4Mn0.PKDawoNKeeblcCuOEdlwO57YOodwDL2ey1UmqThiJdc";

/// The built-in backend: the production one, unless the build set
/// `PANORAMA_DEFAULT_SUPABASE_URL` / `PANORAMA_DEFAULT_SUPABASE_ANON_KEY` (a private deployment).
pub const DEFAULT_SUPABASE_URL: &str = match option_env!("PANORAMA_DEFAULT_SUPABASE_URL") {
    Some(v) if !v.is_empty() => v,
    _ => PRODUCTION_SUPABASE_URL,
};
pub const DEFAULT_SUPABASE_ANON_KEY: &str = match option_env!("PANORAMA_DEFAULT_SUPABASE_ANON_KEY")
{
    Some(v) if !v.is_empty() => v,
    _ => PRODUCTION_SUPABASE_ANON_KEY,
};

/// What the command line said (flags only; the environment is consulted by [`resolve`]).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub verbose: bool,
    pub config_dir: Option<PathBuf>,
    pub config_path: Option<PathBuf>,
    pub log_path: Option<PathBuf>,
    pub pid_path: Option<PathBuf>,
    pub claude_cli: Option<PathBuf>,
    pub codex_cli: Option<PathBuf>,
    pub gemini_cli: Option<PathBuf>,
    pub supabase_url: Option<String>,
    pub anon_key: Option<String>,
    pub device_name: Option<String>,
    pub allow_insecure_http: bool,
    pub metrics_addr: Option<String>,
    pub log_format: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// The first non-empty environment variable of `names`.
pub fn env_nonempty(names: &[&str]) -> Option<OsString> {
    names
        .iter()
        .filter_map(std::env::var_os)
        .find(|v| !v.is_empty())
}

fn env_string(names: &[&str]) -> Option<String> {
    env_nonempty(names)
        .map(|v| v.to_string_lossy().trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Makes a path absolute against the current directory (the daemon and its children must not
/// depend on where the CLI was started).
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(p),
        Err(_) => p.to_path_buf(),
    }
}

fn pick_path(flag: &Option<PathBuf>, env: &str) -> Option<PathBuf> {
    flag.clone()
        .or_else(|| env_nonempty(&[env]).map(PathBuf::from))
        .map(|p| absolute(&p))
}

/// A provider CLI override: a bare command name stays as is (looked up in PATH); a relative
/// path with a slash is made absolute.
fn pick_cli(flag: &Option<PathBuf>, envs: &[&str]) -> Option<PathBuf> {
    let p = flag
        .clone()
        .or_else(|| env_nonempty(envs).map(PathBuf::from))?;
    if p.components().count() > 1 {
        Some(absolute(&p))
    } else {
        Some(p)
    }
}

/// The default config dir, `~/.panorama/gateway`.
pub fn default_config_dir() -> Result<PathBuf, String> {
    match home::home_dir() {
        Some(h) if !h.as_os_str().is_empty() => Ok(h.join(".panorama").join("gateway")),
        _ => Err("cannot determine your home directory: set HOME, or pass --config-dir (or PANORAMA_GATEWAY_CONFIG_DIR)".into()),
    }
}

/// Resolves paths and settings: flag > environment > default.
pub fn resolve(o: &Overrides) -> Result<Settings, String> {
    let config_dir = match pick_path(&o.config_dir, "PANORAMA_GATEWAY_CONFIG_DIR") {
        Some(d) => d,
        None => default_config_dir()?,
    };
    let config_path = pick_path(&o.config_path, "PANORAMA_GATEWAY_CONFIG_PATH")
        .unwrap_or_else(|| config_dir.join("gateway.json"));
    let state_dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| config_dir.clone());
    let log_path = pick_path(&o.log_path, "PANORAMA_GATEWAY_LOG_PATH")
        .unwrap_or_else(|| state_dir.join("gateway.log"));
    let pid_path = pick_path(&o.pid_path, "PANORAMA_GATEWAY_PID_PATH")
        .unwrap_or_else(|| state_dir.join("gateway.pid"));
    let status_path = status_path_for(&pid_path);
    let spool_dir = config_dir.join("spool");
    let inflight_dir = config_dir.join("inflight");
    let flag_str = |v: &Option<String>| {
        v.as_ref()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    Ok(Settings {
        paths: Paths {
            config_dir,
            config_path,
            log_path,
            pid_path,
            status_path,
            spool_dir,
            inflight_dir,
        },
        verbose: o.verbose,
        device_name: flag_str(&o.device_name)
            .or_else(|| env_string(&["PANORAMA_GATEWAY_DEVICE_NAME"])),
        cli_overrides: CliOverrides {
            claude: pick_cli(&o.claude_cli, &["PANORAMA_CLAUDE_CLI", "CLAUDE_CLI"]),
            codex: pick_cli(&o.codex_cli, &["PANORAMA_CODEX_CLI", "CODEX_CLI"]),
            gemini: pick_cli(&o.gemini_cli, &["PANORAMA_GEMINI_CLI", "GEMINI_CLI"]),
        },
        supabase_url: flag_str(&o.supabase_url)
            .or_else(|| env_string(&["SUPABASE_URL", "PANORAMA_SUPABASE_URL"])),
        log_format: match flag_str(&o.log_format)
            .or_else(|| env_string(&["PANORAMA_GATEWAY_LOG_FORMAT"]))
        {
            Some(v) => crate::logging::Format::parse(&v)?,
            None => crate::logging::Format::Text,
        },
        ca_file: o.ca_file.as_deref().map(absolute),
        metrics_addr: flag_str(&o.metrics_addr)
            .or_else(|| env_string(&["PANORAMA_GATEWAY_METRICS_ADDR"])),
        anon_key: flag_str(&o.anon_key).or_else(|| {
            env_string(&[
                "SUPABASE_ANON_KEY",
                "PANORAMA_SUPABASE_ANON_KEY",
                "SUPABASE_PUBLISHABLE_KEY",
            ])
        }),
        allow_insecure_http: o.allow_insecure_http
            || env_string(&[ALLOW_INSECURE_HTTP_ENV]).is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            }),
    })
}

/// `gateway.status.json` beside the pid file: it describes the daemon that holds that pid lock.
pub fn status_path_for(pid_path: &Path) -> PathBuf {
    let dir = pid_path.parent().unwrap_or(Path::new("/"));
    match pid_path.file_name().and_then(|n| n.to_str()) {
        Some("gateway.pid") | None => dir.join("gateway.status.json"),
        Some(n) => dir.join(format!("{}.status.json", n.trim_end_matches(".pid"))),
    }
}

fn nonblank(v: Option<&str>) -> Option<String> {
    v.map(str::trim).filter(|s| !s.is_empty()).map(String::from)
}

/// True for a host (with an optional port) that is this machine: `localhost` (and
/// `*.localhost`), 127.0.0.0/8, `[::1]`.
pub fn is_loopback_host(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    let h = host.to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h == "::1"
        || h.parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The backend to use: flag/environment (already in `settings`) > saved at pairing >
/// build-time default. The error lists exactly what to set.
pub fn backend_config(
    settings: &Settings,
    state: Option<&GatewayState>,
) -> Result<BackendConfig, String> {
    let url = nonblank(settings.supabase_url.as_deref())
        .or_else(|| nonblank(state.and_then(|s| s.supabase_url.as_deref())))
        .or_else(|| nonblank(Some(DEFAULT_SUPABASE_URL)));
    let key = nonblank(settings.anon_key.as_deref())
        .or_else(|| nonblank(state.and_then(|s| s.supabase_anon_key.as_deref())))
        .or_else(|| nonblank(Some(DEFAULT_SUPABASE_ANON_KEY)));
    let mut missing = Vec::new();
    if url.is_none() {
        missing.push("the backend URL: --supabase-url or SUPABASE_URL (or PANORAMA_SUPABASE_URL)");
    }
    if key.is_none() {
        missing.push("the anon key: --anon-key or SUPABASE_ANON_KEY (or PANORAMA_SUPABASE_ANON_KEY, SUPABASE_PUBLISHABLE_KEY)");
    }
    match (url, key) {
        (Some(url), Some(anon_key)) => {
            let url = url.trim_end_matches('/').to_string();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "invalid backend URL {url:?}: it must start with https:// (or http:// for a local backend); set --supabase-url or SUPABASE_URL"
                ));
            }
            let host = url
                .split_once("://")
                .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
                .unwrap_or("");
            if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "invalid backend URL {url:?}: it needs a host name and no spaces, like https://<project>.supabase.co; set --supabase-url or SUPABASE_URL"
                ));
            }
            if host.contains('@') {
                // user:password@host would be sent with every request and shown in status.
                return Err(format!(
                    "invalid backend URL {}: credentials in the URL are not supported (the gateway authenticates with the anon key); set --supabase-url or SUPABASE_URL without them",
                    crate::redact::redact(&url.replace(host.split('@').next().unwrap_or(""), "[REDACTED]"))
                ));
            }
            if url.starts_with("http://") && !is_loopback_host(host) && !settings.allow_insecure_http
            {
                return Err(format!(
                    "refusing plain http:// to {host}: pairing codes and tokens would travel in clear text; use https://, or, only on a network you trust, pass --allow-insecure-http (or set {ALLOW_INSECURE_HTTP_ENV}=1). Plain http:// is accepted without it only for loopback hosts (localhost, 127.0.0.1, [::1])"
                ));
            }
            crate::redact::register_secret(&anon_key);
            Ok(BackendConfig { url, anon_key })
        }
        _ => Err(format!(
            "missing backend configuration: set {} (flags, environment, or an env file via --env-file); this build's built-in default is empty",
            missing.join(" and ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: Option<&str>, key: Option<&str>) -> Settings {
        let mut s = resolve(&Overrides {
            config_dir: Some("/tmp/x".into()),
            ..Default::default()
        })
        .unwrap();
        s.supabase_url = url.map(String::from);
        s.anon_key = key.map(String::from);
        s
    }

    #[test]
    fn backend_precedence() {
        let saved = GatewayState {
            supabase_url: Some("https://saved/".into()),
            supabase_anon_key: Some("savedkey".into()),
            ..Default::default()
        };
        let b = backend_config(&settings(None, None), Some(&saved)).unwrap();
        assert_eq!(b.url, "https://saved");
        assert_eq!(b.anon_key, "savedkey");
        let b = backend_config(&settings(Some("https://flag"), None), Some(&saved)).unwrap();
        assert_eq!(b.url, "https://flag");
        assert_eq!(b.anon_key, "savedkey");
        // Nothing set, nothing saved: the built-in (production unless the build said otherwise).
        let b = backend_config(&settings(None, None), None).unwrap();
        assert_eq!(b.url, DEFAULT_SUPABASE_URL);
        assert_eq!(b.anon_key, DEFAULT_SUPABASE_ANON_KEY);
        let b = backend_config(&settings(None, Some("k")), None).unwrap();
        assert_eq!(
            (b.url.as_str(), b.anon_key.as_str()),
            (DEFAULT_SUPABASE_URL, "k")
        );
        let e = backend_config(&settings(Some("ftp://x"), Some("k")), None).unwrap_err();
        assert!(e.contains("https://"), "{e}");
        for bad in ["https:///rest", "https://exa mple.com", "http://?x"] {
            let e = backend_config(&settings(Some(bad), Some("k")), None).unwrap_err();
            assert!(e.contains("needs a host name"), "{bad}: {e}");
        }
        let e = backend_config(
            &settings(Some("https://u:hunter2@h.example"), Some("k")),
            None,
        )
        .unwrap_err();
        assert!(e.contains("credentials") && !e.contains("hunter2"), "{e}");
        assert!(backend_config(&settings(Some("http://127.0.0.1:5432/"), Some("k")), None).is_ok());
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        for ok in [
            "http://127.0.0.1:54321",
            "http://localhost:8000/",
            "http://LOCALHOST",
            "http://api.localhost:1",
            "http://127.9.9.9",
            "http://[::1]:54321",
            "https://project.supabase.co",
        ] {
            assert!(
                backend_config(&settings(Some(ok), Some("k")), None).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "http://example.com",
            "http://10.0.0.5:54321",
            "http://192.168.1.2",
            "http://localhost.evil.example",
            "http://127.0.0.1.nip.io",
            "http://[::2]",
        ] {
            let e = backend_config(&settings(Some(bad), Some("k")), None).unwrap_err();
            assert!(
                e.starts_with("refusing plain http:// to ") && e.contains("--allow-insecure-http"),
                "{bad}: {e}"
            );
            let mut s = settings(Some(bad), Some("k"));
            s.allow_insecure_http = true;
            assert!(backend_config(&s, None).is_ok(), "{bad} with the flag");
        }
    }

    #[test]
    fn paths_follow_config_path() {
        let s = resolve(&Overrides {
            config_dir: Some("/tmp/cd".into()),
            config_path: Some("/tmp/other/g.json".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.paths.log_path, PathBuf::from("/tmp/other/gateway.log"));
        assert_eq!(s.paths.pid_path, PathBuf::from("/tmp/other/gateway.pid"));
        assert_eq!(
            s.paths.status_path,
            PathBuf::from("/tmp/other/gateway.status.json")
        );
        assert_eq!(s.paths.spool_dir, PathBuf::from("/tmp/cd/spool"));
    }
}
