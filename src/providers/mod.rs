//! Provider CLIs: discovery, probing, health and capabilities; one file per CLI. Knows CLIs,
//! nothing about the wire. Owner: Providers (issue 5).
//!
//! [`Registry::discover`] finds the three CLIs once (override > install locations and PATH) and
//! probes them (`--version`, `--help`, and for Gemini `--list-extensions`). The probe results
//! are cached; [`Registry::refresh`] re-probes on demand (doctor, or a slow periodic refresh)
//! instead of spawning seven processes on every heartbeat as the reference does.

pub mod argv;
pub mod claude;
pub mod codex;
pub mod diagnose;
pub mod discovery;
pub mod gemini;
pub mod health;
pub mod normalize;
pub mod plan;
mod probe;
pub mod redact;
pub mod restrict;
pub mod run;
pub mod subplan;
pub mod versions;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::CliOverrides;
use discovery::{Discovered, EnvLookup, ProbeStop, ProcessEnv, Source};
use health::{Health, Mode, Status};
use plan::RunRequest;
pub use probe::{probe_caps, validate};
use probe::{probe_crashed, run_parallel};

/// Per-command timeout of capability probes.
/// Gemini CLI 0.61 (a large Node bundle) needs several seconds to start on a busy 2-core host.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(30_000);
/// Timeout of the full-check model call.
pub const VALIDATION_TIMEOUT: Duration = Duration::from_millis(30_000);
pub const VALIDATION_PROMPT: &str = "Say hi.";

/// The three providers, in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderId {
    Claude,
    Codex,
    Gemini,
}

impl ProviderId {
    pub const ALL: [ProviderId; 3] = [ProviderId::Claude, ProviderId::Codex, ProviderId::Gemini];

    /// The wire id.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderId::Claude => "claude_code",
            ProviderId::Codex => "codex",
            ProviderId::Gemini => "gemini",
        }
    }
    pub fn parse(s: &str) -> Option<ProviderId> {
        ProviderId::ALL.into_iter().find(|p| p.as_str() == s)
    }
    /// Registry label.
    pub fn label(self) -> &'static str {
        match self {
            ProviderId::Claude => "Claude Code",
            ProviderId::Codex => "OpenAI Codex",
            ProviderId::Gemini => "Gemini CLI",
        }
    }
    /// Short label used in messages.
    pub fn short(self) -> &'static str {
        match self {
            ProviderId::Claude => "Claude",
            ProviderId::Codex => "Codex",
            ProviderId::Gemini => "Gemini",
        }
    }
    pub fn bare_name(self) -> &'static str {
        match self {
            ProviderId::Claude => "claude",
            ProviderId::Codex => "codex",
            ProviderId::Gemini => "gemini",
        }
    }
    pub(crate) fn flag_table(self) -> &'static [(&'static str, &'static [&'static str], bool)] {
        match self {
            ProviderId::Claude => claude::FLAGS,
            ProviderId::Codex => codex::FLAGS,
            ProviderId::Gemini => gemini::FLAGS,
        }
    }
    /// How to install it, for messages.
    pub fn install_hint(self) -> &'static str {
        match self {
            ProviderId::Claude => "install Claude Code (npm install -g @anthropic-ai/claude-code) or pass --claude-cli <path> (or set PANORAMA_CLAUDE_CLI)",
            ProviderId::Codex => "install Codex (npm install -g @openai/codex) or pass --codex-cli <path> (or set PANORAMA_CODEX_CLI)",
            ProviderId::Gemini => "install Gemini CLI (npm install -g @google/gemini-cli) or pass --gemini-cli <path> (or set PANORAMA_GEMINI_CLI)",
        }
    }
    /// How to log in, for messages.
    pub fn login_hint(self) -> &'static str {
        diagnose::login_hint(self)
    }
    fn override_of(self, o: &CliOverrides) -> Option<&Path> {
        match self {
            ProviderId::Claude => o.claude.as_deref(),
            ProviderId::Codex => o.codex.as_deref(),
            ProviderId::Gemini => o.gemini.as_deref(),
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Provider inference from a model name (providers.md §1.3).
pub fn infer_provider(model: &str) -> ProviderId {
    let m = model.to_lowercase();
    if m.starts_with("openai/") || m.starts_with("gpt-") || m.contains("codex") {
        ProviderId::Codex
    } else if m.starts_with("google/") || m.starts_with("gemini") {
        ProviderId::Gemini
    } else {
        ProviderId::Claude
    }
}

/// The supported-flag map of one CLI, in table order.
#[derive(Debug, Clone, PartialEq)]
pub struct Flags(pub Vec<(&'static str, bool)>);

impl Flags {
    pub fn get(&self, key: &str) -> bool {
        self.0.iter().any(|(k, v)| *k == key && *v)
    }
    /// From help text; `None` (help failed) gives the table defaults, except for Codex whose
    /// map is then empty (every flag unsupported).
    pub fn detect(id: ProviderId, help: Option<&str>) -> Flags {
        let table = id.flag_table();
        match help {
            None if id == ProviderId::Codex => Flags(Vec::new()),
            None => Flags(table.iter().map(|(k, _, d)| (*k, *d)).collect()),
            Some(h) => Flags(
                table
                    .iter()
                    .map(|(k, subs, _)| (*k, subs.iter().any(|s| h.contains(s))))
                    .collect(),
            ),
        }
    }
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| ((*k).to_string(), Value::Bool(*v)))
                .collect(),
        )
    }
}

/// What the probes found for one provider.
#[derive(Debug, Clone)]
pub struct Caps {
    pub available: bool,
    /// Trimmed stdout of `--version`.
    pub version: Option<String>,
    pub error: Option<String>,
    pub flags: Flags,
    pub extensions: Option<Vec<String>>,
    /// `(output_schema, stream_json, tool_disable)`.
    pub supports: (bool, bool, bool),
    /// The `--version` run itself, for diagnostics to reuse while it is fresh.
    pub probed: Option<versions::Answer>,
}

impl Caps {
    fn not_probed(id: ProviderId) -> Caps {
        let flags = Flags::detect(id, None);
        Caps {
            available: false,
            version: None,
            error: Some(format!("{} CLI has not been checked yet", id.short())),
            supports: (false, false, false),
            extensions: (id == ProviderId::Gemini).then(Vec::new),
            flags,
            probed: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    id: ProviderId,
    found: Discovered,
    /// Why the login shell knows the name when discovery did not (alias, function, path).
    shell_hint: Option<String>,
    caps: Caps,
    health: Option<Health>,
}

/// How far the start-up checks of the provider CLIs are (see [`Registry::undiscovered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Nothing probed yet.
    Undiscovered,
    /// Commands and flags known, and the backend told.
    Discovered,
    /// Health checked too (a validation call when one was due), and the backend told.
    Checked,
}

/// Called with (provider id, health JSON) whenever health changes and should be persisted
/// (the daemon wires it to `config::state::update` + `health::apply_to_state`).
pub type HealthSink = Arc<dyn Fn(&str, &Health) + Send + Sync>;

/// The discovered provider CLIs.
pub struct Registry {
    entries: Mutex<Vec<Entry>>,
    /// Where model runs get their work directories (`<configDir>/work`).
    work_root: Mutex<Option<PathBuf>>,
    sink: Mutex<Option<HealthSink>>,
    /// `gateway_events` rows waiting to be sent (without gateway_id/team_id).
    events: Mutex<Vec<Value>>,
    /// Bumped on every health change, so the heartbeat can tell it should send now.
    generation: std::sync::atomic::AtomicU64,
    /// The last `--version` answer per CLI (discovery's, then diagnostics').
    versions: versions::VersionCache,
    /// How far the start-up checks of an [`Registry::undiscovered`] registry are.
    stage: (Mutex<Stage>, std::sync::Condvar),
    /// Stops the probes and the validation call under way ([`Registry::stop_checks`]).
    stop: ProbeStop,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("entries", &*self.lock())
            .finish()
    }
}

impl Default for Registry {
    /// Nothing probed: every provider unavailable until [`Registry::discover`] or
    /// [`Registry::refresh`].
    fn default() -> Self {
        Registry::from_entries(
            ProviderId::ALL
                .into_iter()
                .map(|id| Entry {
                    id,
                    found: Discovered {
                        command: PathBuf::from(id.bare_name()),
                        version: None,
                        source: Source::Fallback,
                    },
                    shell_hint: None,
                    caps: Caps::not_probed(id),
                    health: None,
                })
                .collect(),
        )
    }
}

/// One line of `doctor` for one provider.
#[derive(Debug, Clone)]
pub struct ProviderCheck {
    /// `claude_code` | `codex` | `gemini`.
    pub id: String,
    pub ok: bool,
    /// Resolved executable, if found.
    pub command: Option<std::path::PathBuf>,
    pub version: Option<String>,
    /// What is wrong and what to do, when not ok.
    pub detail: Option<String>,
}

impl Registry {
    fn from_entries(entries: Vec<Entry>) -> Registry {
        let versions = versions::VersionCache::default();
        for e in &entries {
            if let Some(a) = &e.caps.probed {
                versions.store(e.id, a.clone());
            }
        }
        Registry {
            versions,
            entries: Mutex::new(entries),
            work_root: Mutex::new(None),
            sink: Mutex::new(None),
            events: Mutex::new(Vec::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            stage: (Mutex::new(Stage::Checked), std::sync::Condvar::new()),
            stop: ProbeStop::default(),
        }
    }

    /// A registry whose discovery runs later ([`Registry::finish_discovery`], off the start-up
    /// path): the heartbeat reports the CLIs as not checked yet meanwhile, and job handlers
    /// that need a CLI wait ([`Registry::wait_for`]) until the daemon says how far it is
    /// ([`Registry::reached`]).
    pub fn undiscovered() -> Registry {
        let r = Registry::default();
        *r.stage.0.lock().unwrap_or_else(|e| e.into_inner()) = Stage::Undiscovered;
        r
    }

    /// Discovers and probes the CLIs of an [`Registry::undiscovered`] registry, keeping the
    /// health loaded meanwhile.
    pub fn finish_discovery(&self, overrides: &CliOverrides) {
        let found = Registry::discover_stoppable(overrides, &ProcessEnv, &self.stop);
        let found = std::mem::take(&mut *found.lock());
        // Not under the entries lock: a diagnostic may hold a version slot for a whole run.
        for e in &found {
            if let Some(a) = &e.caps.probed {
                self.versions.store(e.id, a.clone());
            }
        }
        let mut g = self.lock();
        for (slot, mut e) in g.iter_mut().zip(found) {
            e.health = slot.health.take();
            *slot = e;
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops the probes and the validation call under way, if any, and every later one (the
    /// daemon stops): the probes' process groups are killed now, so a stop during the start-up
    /// checks does not wait out a CLI that hangs.
    pub fn stop_checks(&self) {
        self.stop.stop();
    }

    /// The start-up checks reached `stage`: handlers waiting for it go on.
    pub fn reached(&self, stage: Stage) {
        let (m, cv) = &self.stage;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        *g = (*g).max(stage);
        cv.notify_all();
    }

    /// Whether the CLIs have been discovered (always, except for an undiscovered registry
    /// until the daemon says so).
    pub fn is_discovered(&self) -> bool {
        *self.stage.0.lock().unwrap_or_else(|e| e.into_inner()) >= Stage::Discovered
    }

    /// Blocks until the start-up checks reached `stage` (bounded by their probes' timeouts).
    pub fn wait_for(&self, stage: Stage) {
        let (m, cv) = &self.stage;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        while *g < stage {
            log::info!(target: "providers", "waiting for the provider CLIs to be checked ({stage:?}) before running the job");
            g = cv
                .wait_timeout(g, Duration::from_secs(10))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        crate::util::lock(&self.entries)
    }

    /// Finds each CLI (flag/env override > PATH > usual install locations) and probes it with
    /// short timeouts. Never fails: a missing CLI is recorded as unavailable.
    pub fn discover(overrides: &CliOverrides) -> Registry {
        Self::discover_with(overrides, &ProcessEnv)
    }

    /// [`Registry::discover`] with an injected environment.
    pub fn discover_with(overrides: &CliOverrides, env: &(dyn EnvLookup + Sync)) -> Registry {
        Self::discover_stoppable(overrides, env, &ProbeStop::default())
    }

    /// [`Registry::discover_with`], its probes ended by `stop`.
    fn discover_stoppable(
        overrides: &CliOverrides,
        env: &(dyn EnvLookup + Sync),
        stop: &ProbeStop,
    ) -> Registry {
        let entries = run_parallel(
            |id| {
                let found = discovery::discover_one(id, id.override_of(overrides), env, stop);
                log::info!(target: "providers", "discovered provider={} command={} source={} version={}",
                id.as_str(), found.command.display(), found.source.as_str(), found.version.as_deref().unwrap_or("-"));
                let caps = probe_caps(id, &found.command, stop);
                let shell_hint = (found.source == Source::Fallback && !caps.available)
                    .then(|| discovery::shell_hint(id, env, stop))
                    .flatten();
                if let Some(h) = &shell_hint {
                    log::warn!(target: "providers", "{} CLI not found in PATH: {h}", id.label());
                }
                Entry {
                    id,
                    found,
                    shell_hint,
                    caps,
                    health: None,
                }
            },
            |id, msg| Entry {
                id,
                found: Discovered {
                    command: id
                        .override_of(overrides)
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from(id.bare_name())),
                    version: None,
                    source: Source::Fallback,
                },
                shell_hint: None,
                caps: probe_crashed(id, &msg),
                health: None,
            },
        );
        Registry::from_entries(entries)
    }

    /// Uses these commands as they are (no search), then probes them. For tests and callers
    /// that already know the paths.
    #[cfg(test)]
    pub fn with_commands(commands: [PathBuf; 3]) -> Registry {
        let entries = run_parallel(
            |id| {
                let command = commands[id.index()].clone();
                let caps = probe_caps(id, &command, &ProbeStop::default());
                Entry {
                    id,
                    found: Discovered {
                        command,
                        version: None,
                        source: Source::Override,
                    },
                    shell_hint: None,
                    caps,
                    health: None,
                }
            },
            |id, msg| Entry {
                id,
                found: Discovered {
                    command: commands[id.index()].clone(),
                    version: None,
                    source: Source::Override,
                },
                shell_hint: None,
                caps: probe_crashed(id, &msg),
                health: None,
            },
        );
        Registry::from_entries(entries)
    }

    /// Re-runs the capability probes on the already chosen commands.
    #[cfg(test)]
    pub fn refresh(&self) {
        let cmds: Vec<PathBuf> = self
            .lock()
            .iter()
            .map(|e| e.found.command.clone())
            .collect();
        let caps = run_parallel(
            |id| probe_caps(id, &cmds[id.index()], &self.stop),
            |id, msg| probe_crashed(id, &msg),
        );
        for (id, c) in ProviderId::ALL.into_iter().zip(&caps) {
            if let Some(a) = &c.probed {
                self.versions.store(id, a.clone());
            }
        }
        let mut g = self.lock();
        for (e, c) in g.iter_mut().zip(caps) {
            e.caps = c;
        }
    }

    /// Model runs work in `<root>/model-runs/<job id>`, validations in `<root>/validation/…`.
    /// Set it to `<configDir>/work`.
    pub fn set_work_root(&self, root: PathBuf) {
        *self.work_root.lock().unwrap_or_else(|e| e.into_inner()) = Some(root);
    }

    /// The work root; when unset, an owner-only directory under the system temp dir.
    pub fn work_root(&self) -> PathBuf {
        self.work_root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!(
                    "panorama-gateway-work-{}",
                    // SAFETY: getuid has no failure mode.
                    unsafe { libc::getuid() }
                ))
            })
    }

    /// Where health changes are persisted.
    pub fn set_health_sink(&self, sink: HealthSink) {
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// Seeds health from gateway.json's `providerHealth` (unknown ids ignored).
    pub fn load_health(&self, map: &Map<String, Value>) {
        let mut g = self.lock();
        for e in g.iter_mut() {
            if let Some(h) = map.get(e.id.as_str()).and_then(Health::from_json) {
                e.health = Some(h);
            }
        }
    }

    pub fn command(&self, id: ProviderId) -> PathBuf {
        self.wait_for(Stage::Discovered);
        self.lock()[id.index()].found.command.clone()
    }

    pub fn flags(&self, id: ProviderId) -> Flags {
        self.wait_for(Stage::Discovered);
        self.lock()[id.index()].caps.flags.clone()
    }

    /// The last `--version` answers, for diagnostics.
    pub fn versions(&self) -> &versions::VersionCache {
        &self.versions
    }

    pub fn health(&self, id: ProviderId) -> Option<Health> {
        self.lock()[id.index()].health.clone()
    }

    /// `gateway_events` rows produced by health changes since the last call (each without
    /// `gateway_id`/`team_id`, which the caller adds): `provider_unhealthy` after model runs,
    /// `provider_validation` after full checks with a context.
    pub fn take_events(&self) -> Vec<Value> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Changes whenever any provider's health changes (send a heartbeat when it moved).
    pub fn health_generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn push_event(&self, ev: Value) {
        let mut g = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() < 100 {
            g.push(ev);
        }
    }

    fn set_health(&self, id: ProviderId, h: Health, persist: bool) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let sink = {
            let mut g = self.lock();
            g[id.index()].health = Some(h.clone());
            self.sink.lock().unwrap_or_else(|e| e.into_inner()).clone()
        };
        if persist {
            if let Some(s) = sink {
                s(id.as_str(), &h);
            }
        }
    }

    /// After a model run (providers.md §4.6). Returns true when the status changed to a
    /// non-healthy one (the caller may emit a `provider_unhealthy` event).
    pub fn record_run(
        &self,
        id: ProviderId,
        status: Status,
        summary: Option<&str>,
        job_id: Option<&str>,
    ) -> bool {
        self.record_run_in(id, status, summary, job_id, "model_run", None)
    }

    /// [`Registry::record_run`] with the event's `context` and `run_id` (subagent runs).
    pub fn record_run_in(
        &self,
        id: ProviderId,
        status: Status,
        summary: Option<&str>,
        job_id: Option<&str>,
        context: &str,
        run_id: Option<&str>,
    ) -> bool {
        let prev = self.health(id);
        let h = health::after_run(prev.as_ref(), status, summary, &crate::util::now_rfc3339());
        let changed = prev.map(|p| p.status) != Some(status) && status != Status::Healthy;
        if changed {
            self.push_event(json!({
                "provider": id.as_str(),
                "level": if status == Status::Unhealthy { "error" } else { "warn" },
                "code": "provider_unhealthy",
                "message": format!("{} provider marked {}.", id.short(), status.as_str()),
                "details": {"context": context, "status": status.as_str(),
                            "error": h.error.clone(), "job_id": job_id, "run_id": run_id},
            }));
        }
        self.set_health(id, h, true);
        changed
    }

    /// Resolves health for every provider (providers.md §4.3), running the validation call
    /// where the mode asks for it (in parallel), and persists when a full check ran. With a
    /// `context` (`startup`, `pairing`, `doctor`) and a full check, each provider that is not
    /// healthy gets a `provider_validation` event (see [`Registry::take_events`]).
    pub fn check_health(&self, mode: Mode, context: Option<&str>) -> Vec<(ProviderId, Health)> {
        if !self.is_discovered() {
            // Nothing probed yet: judging health now would call every CLI unavailable.
            return Vec::new();
        }
        let snapshot: Vec<Entry> = self.lock().clone();
        let work_root = self.work_root();
        let results = run_parallel(
            |id| {
                let e = &snapshot[id.index()];
                let now = crate::util::now_rfc3339();
                let prev = e.health.as_ref();
                if !e.caps.available {
                    return health::unavailable(prev, mode, e.caps.error.as_deref(), &now);
                }
                if health::needs_full(mode, prev) {
                    let (ok, err, ms) = validate(
                        id,
                        &e.found.command,
                        &e.caps.flags,
                        &work_root,
                        self.stop.token(),
                    );
                    log::info!(target: "providers", "validation provider={} ok={} duration_ms={}", id.as_str(), ok, ms);
                    return health::full(ok, err.as_deref(), ms, &crate::util::now_rfc3339());
                }
                health::light(prev, &now)
            },
            |id, msg| {
                health::full(
                    false,
                    Some(&format!(
                        "checking the {} CLI failed with an internal error: {msg}",
                        id.short()
                    )),
                    0,
                    &crate::util::now_rfc3339(),
                )
            },
        );
        let any_full = results.iter().any(|h| h.full);
        let out: Vec<(ProviderId, Health)> = ProviderId::ALL.into_iter().zip(results).collect();
        for (id, h) in &out {
            self.set_health(
                *id,
                h.clone(),
                mode != Mode::Light && (any_full || mode == Mode::Full),
            );
            if let (Some(ctx), true, false) = (context, any_full, h.status == Status::Healthy) {
                let message = match &h.error {
                    Some(e) => format!(
                        "{} validation failed: {}",
                        id.as_str(),
                        plan::collapse(e, 500)
                    ),
                    None => format!("{} validation status: {}", id.as_str(), h.status.as_str()),
                };
                self.push_event(json!({
                    "provider": id.as_str(),
                    "level": if h.status == Status::Unhealthy { "error" } else { "warn" },
                    "code": "provider_validation",
                    "message": message,
                    "details": {"context": ctx, "status": h.status.as_str(),
                                "check_type": h.check_type(),
                                "error": h.error.clone(), "duration_ms": h.duration_ms},
                }));
            }
        }
        out
    }

    /// One check per provider, for `doctor`.
    pub fn doctor_report(&self) -> Vec<ProviderCheck> {
        self.lock()
            .iter()
            .map(|e| {
                let id = e.id;
                let status = e.health.as_ref().map(|h| h.status);
                let found = e.found.source != Source::Fallback || e.caps.available;
                let ok = e.caps.available
                    && !matches!(status, Some(Status::Unhealthy | Status::Unavailable));
                let detail = if !e.caps.available {
                    let why = e.caps.error.clone().unwrap_or_default();
                    Some(if e.found.source == Source::Fallback {
                        match &e.shell_hint {
                            Some(h) => format!("{} CLI not found on PATH: {h}", id.short()),
                            None => format!(
                                "{} CLI not found on PATH or in the usual install locations ({why}); {}",
                                id.short(),
                                id.install_hint()
                            ),
                        }
                    } else {
                        format!(
                            "{} CLI at {} did not answer --version ({why}); check that path, or {}",
                            id.short(),
                            e.found.command.display(),
                            id.install_hint()
                        )
                    })
                } else if status == Some(Status::Unhealthy) {
                    let err = e
                        .health
                        .as_ref()
                        .and_then(|h| h.error.clone())
                        .unwrap_or_else(|| "the last model call failed".into());
                    // A classified failure (auth, network, rate limit) already says what to
                    // run; only an unclassified one gets the login hint.
                    let hint = match diagnose::classify(&err) {
                        Some(_) => String::new(),
                        None => format!("; {}", id.login_hint()),
                    };
                    Some(format!(
                        "{} CLI is installed but its last check failed: {}{hint}. Then run `panorama-gateway doctor` again",
                        id.short(),
                        plan::collapse(err.trim_end_matches('.'), 600),
                    ))
                } else {
                    None
                };
                ProviderCheck {
                    id: id.as_str().to_string(),
                    ok,
                    command: found.then(|| e.found.command.clone()),
                    version: e.caps.version.clone().or_else(|| e.found.version.clone()),
                    detail,
                }
            })
            .collect()
    }

    /// The `providers` object of capabilities v1 (PROTOCOL.md §9), all three ids present.
    pub fn capabilities_providers(&self) -> Value {
        let mut out = Map::new();
        for e in self.lock().iter() {
            let mut m = Map::new();
            m.insert("available".into(), e.caps.available.into());
            if let Some(v) = &e.caps.version {
                m.insert("version".into(), v.clone().into());
            }
            if let Some(err) = &e.caps.error {
                m.insert("error".into(), err.clone().into());
            }
            m.insert("supported_flags".into(), e.caps.flags.to_json());
            let (a, b, c) = e.caps.supports;
            m.insert(
                "supports".into(),
                json!({"output_schema": a, "stream_json": b, "tool_disable": c}),
            );
            if let Some(x) = &e.caps.extensions {
                m.insert("extensions".into(), json!(x));
            }
            if let Some(h) = &e.health {
                m.insert("health".into(), h.to_json());
            }
            out.insert(e.id.as_str().to_string(), Value::Object(m));
        }
        Value::Object(out)
    }

    /// Whether any provider can take model runs (providers.md §4.5), for `services`.
    pub fn model_execution_ready(&self) -> bool {
        self.lock().iter().any(|e| {
            let st = e.health.as_ref().map(|h| h.status);
            st == Some(Status::Healthy)
                || (e.caps.available
                    && !matches!(st, Some(Status::Unavailable | Status::Unhealthy)))
        })
    }
}

/// The failure message a CLI gave in a structured place, if any: the `message` of the
/// `error_summary` found in stderr (Codex's OpenAI-style errors), Claude's error envelope
/// (`is_error` + `result`), or Gemini's `{"error": {"message"}}` on stdout.
pub fn cli_reported(id: ProviderId, stdout: &str, summary: Option<&Value>) -> Option<String> {
    if let Some(m) = summary
        .and_then(|s| s.get("message"))
        .and_then(Value::as_str)
    {
        return Some(m.to_string());
    }
    if id == ProviderId::Claude {
        // stream-json: the last `result` event (a continuation that finds no session has no
        // `result` text, only `errors`).
        let last = normalize::last_event(stdout, "result");
        if let Some(r) = last.filter(|r| r.get("is_error") == Some(&Value::Bool(true))) {
            let errors: Vec<&str> = r
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            return match r.get("result").and_then(Value::as_str) {
                Some(t) if !t.trim().is_empty() => Some(t.to_string()),
                _ if !errors.is_empty() => Some(errors.join("; ")),
                _ => r.get("subtype").and_then(Value::as_str).map(String::from),
            };
        }
    }
    let env = normalize::extract_object(stdout, false)?;
    match id {
        ProviderId::Claude if env.get("is_error") == Some(&Value::Bool(true)) => {
            env.get("result").and_then(Value::as_str).map(String::from)
        }
        ProviderId::Gemini => env
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(String::from),
        _ => None,
    }
}

/// The argv and files for a model call on `id`.
pub fn build_plan(
    id: ProviderId,
    req: &RunRequest,
    command: &Path,
    flags: &Flags,
) -> Result<plan::Plan, argv::InputError> {
    match id {
        ProviderId::Claude => claude::plan(req, command, flags),
        ProviderId::Codex => codex::plan(req, command, flags),
        ProviderId::Gemini => gemini::plan(req, command, flags),
    }
}

pub use subplan::subagent_plan;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
