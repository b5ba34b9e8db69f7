//! Finding each CLI (providers.md §2): override > usual install locations and PATH, each
//! candidate probed with `--version`; the highest version wins.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::ProviderId;
use crate::exec;

/// How long a discovery `--version` probe may take.
pub const DISCOVERY_PROBE_TIMEOUT: Duration = Duration::from_millis(5000);

/// Ends the probes of a check under way at once, and keeps later ones from starting: the
/// daemon stops during its start-up checks (a stop must not wait out a CLI that hangs in
/// `--version`). Every probe runs registered here, so [`ProbeStop::stop`] reaches its process
/// group. The default one is never stopped (`doctor`, `pair`).
#[derive(Debug, Clone, Default)]
pub struct ProbeStop {
    token: exec::CancelToken,
    children: Arc<exec::Children>,
}

impl ProbeStop {
    /// The owner under which probes are registered.
    const OWNER: &'static str = "provider-checks";

    /// Kills the process group of every probe under way now (SIGKILL: a probe has nothing to
    /// save) and returns once they are reaped; probes asked for later do not start.
    pub fn stop(&self) {
        self.token.cancel();
        self.children.kill_all(Duration::ZERO);
    }

    /// Set once [`ProbeStop::stop`] was called: runs that are not probes (the validation call)
    /// stop through it too.
    pub fn token(&self) -> &exec::CancelToken {
        &self.token
    }

    fn arm(&self, spec: &mut exec::Spec) {
        spec.cancel = Some(self.token.clone());
        spec.register = Some((self.children.clone(), Self::OWNER.to_string()));
    }
}

/// Where the command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--<p>-cli` or its environment variables.
    Override,
    /// Found on disk and answered `--version`.
    Detected,
    /// Nothing answered; the bare name is kept (it fails at spawn time with a clear error).
    Fallback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Override => "override",
            Source::Detected => "detected",
            Source::Fallback => "fallback",
        }
    }
}

/// The command chosen for one provider.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub command: PathBuf,
    pub version: Option<String>,
    pub source: Source,
}

/// What discovery may read from the environment (injectable so tests need not touch the
/// process's own).
pub trait EnvLookup {
    fn var(&self, name: &str) -> Option<OsString>;
    fn home(&self) -> Option<PathBuf> {
        self.var("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvLookup for ProcessEnv {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
    fn home(&self) -> Option<PathBuf> {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(home::home_dir)
    }
}

fn expand_home(p: &str, home: Option<&Path>) -> Option<PathBuf> {
    let p = p.trim();
    if p.is_empty() {
        return None;
    }
    if let Some(rest) = p.strip_prefix("~/") {
        return home.map(|h| h.join(rest));
    }
    if p == "~" {
        return home.map(Path::to_path_buf);
    }
    let pb = PathBuf::from(p);
    if pb.is_absolute() {
        Some(pb)
    } else {
        std::env::current_dir().ok().map(|c| c.join(pb))
    }
}

/// The bin directories searched, in order, duplicates dropped (providers.md §2.3).
pub fn bin_dirs(env: &dyn EnvLookup) -> Vec<PathBuf> {
    let home = env.home();
    let h = home.as_deref();
    let mut raw: Vec<String> = Vec::new();
    let var = |n: &str| env.var(n).map(|v| v.to_string_lossy().into_owned());
    if let Some(v) = var("PNPM_HOME") {
        raw.push(v);
    }
    for (name, suffix) in [
        ("NPM_CONFIG_PREFIX", "/bin"),
        ("npm_config_prefix", "/bin"),
        ("VOLTA_HOME", "/bin"),
        ("BUN_INSTALL", "/bin"),
        ("HOMEBREW_PREFIX", "/bin"),
        ("BREW_PREFIX", "/bin"),
        ("ASDF_DATA_DIR", "/shims"),
    ] {
        if let Some(v) = var(name).filter(|v| !v.trim().is_empty()) {
            raw.push(format!("{}{suffix}", v.trim().trim_end_matches('/')));
        }
    }
    if cfg!(target_os = "macos") {
        raw.extend(["/opt/homebrew/bin", "/usr/local/bin", "~/Library/pnpm"].map(String::from));
    }
    raw.extend(
        [
            "/usr/local/bin",
            "/usr/bin",
            "/bin",
            "~/.local/bin",
            "~/bin",
            "~/.npm-global/bin",
            "~/.nvm/versions/node/current/bin",
            "~/.asdf/shims",
            "~/.nix-profile/bin",
        ]
        .map(String::from),
    );
    if let Some(path) = var("PATH") {
        // Relative entries (`.`, an empty one) mean "wherever the daemon was started": a cloned
        // repository with an executable named `claude` would be run for months. Skipped.
        raw.extend(
            path.split(':')
                .map(str::trim)
                .filter(|e| e.starts_with('/') || e.starts_with('~'))
                .map(String::from),
        );
    }
    let mut seen = HashSet::new();
    raw.iter()
        .filter_map(|r| expand_home(r, h))
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

/// An executable regular file.
pub fn is_executable_file(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Candidates in probe order: Claude's own install locations, then every bin directory that
/// holds an executable of that name, then the bare name. Duplicates (same real path) dropped.
pub fn candidates(id: ProviderId, env: &dyn EnvLookup) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen_real = HashSet::new();
    let mut push = |p: PathBuf, out: &mut Vec<PathBuf>| {
        let key = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
        if seen_real.insert(key) {
            out.push(p);
        }
    };
    if id == ProviderId::Claude {
        if let Some(h) = env.home() {
            for extra in [h.join(".claude/local/claude"), h.join(".claude/claude")] {
                if is_executable_file(&extra) {
                    push(extra, &mut out);
                }
            }
        }
    }
    for dir in bin_dirs(env) {
        let p = dir.join(id.bare_name());
        if is_executable_file(&p) {
            if let Some(why) = untrusted_reason(&p) {
                log::warn!(target: "providers", "ignoring {}: {why}; install the CLI somewhere only you (or root) can write, or name it with --{}-cli", p.display(), id.bare_name());
                continue;
            }
            push(p, &mut out);
        }
    }
    out.push(PathBuf::from(id.bare_name()));
    out
}

/// Why a CLI found by searching must not be run: anyone could have put it there or can change
/// it (a world-writable file, or a file of another user in a world-writable directory such as
/// /tmp reached through a relative PATH entry). The gateway runs it for months with your
/// rights. An explicit `--<cli>-cli` is your choice and is not filtered.
pub fn untrusted_reason(p: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(p).ok()?;
    let md = std::fs::metadata(&real).ok()?;
    let mode = md.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Some(format!(
            "{} is writable by every user (mode {mode:04o})",
            real.display()
        ));
    }
    let dir = real.parent()?;
    let dmd = std::fs::metadata(dir).ok()?;
    let dmode = dmd.mode() & 0o7777;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if dmode & 0o002 != 0 && (dmode & libc::S_ISVTX == 0 || (md.uid() != me && md.uid() != 0)) {
        return Some(format!(
            "it lives in {}, a directory every user can write to (mode {dmode:04o}), and belongs to uid {}",
            dir.display(),
            md.uid()
        ));
    }
    None
}

/// The first `exec <target>` of a small wrapper script, when that target does not exist
/// (providers.md §2.2: the npm-local `~/.claude/local/claude` wrapper can outlive its target).
pub fn broken_wrapper_target(path: &Path, home: Option<&Path>) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 4096 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let mut i = 0;
    while let Some(pos) = text[i..].find("exec") {
        let start = i + pos + 4;
        i = start;
        let ws = text[start..]
            .chars()
            .take_while(|c| c.is_whitespace())
            .map(char::len_utf8)
            .sum::<usize>();
        if ws == 0 {
            continue;
        }
        let rest = &text[start + ws..];
        let bare = || rest.split(char::is_whitespace).next().unwrap_or("");
        // A quoted target up to its closing quote; an unclosed quote is a bare word (quote
        // included), as the reference's `exec\s+("[^"]*"|'[^']*'|\S+)` reads it.
        let target = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => match rest[1..].find(q) {
                Some(end) => rest[1..1 + end].to_string(),
                None => bare().to_string(),
            },
            Some(_) => bare().to_string(),
            None => return None,
        };
        let expanded = match target.strip_prefix("~/") {
            Some(r) => home.map(|h| h.join(r))?,
            None => PathBuf::from(&target),
        };
        return if expanded.exists() {
            None
        } else {
            Some(target)
        };
    }
    None
}

/// A replacement for a broken Claude wrapper: `~/.claude/claude`, else the first `claude` in
/// the bin directories, never the wrapper itself.
fn claude_wrapper_replacement(wrapper: &Path, env: &dyn EnvLookup) -> Option<PathBuf> {
    let real_wrapper = std::fs::canonicalize(wrapper).ok();
    let is_self = |p: &Path| {
        p == wrapper || (real_wrapper.is_some() && std::fs::canonicalize(p).ok() == real_wrapper)
    };
    if let Some(h) = env.home() {
        let c = h.join(".claude/claude");
        if is_executable_file(&c) && !is_self(&c) {
            return Some(c);
        }
    }
    bin_dirs(env)
        .into_iter()
        .map(|d| d.join("claude"))
        .find(|p| is_executable_file(p) && !is_self(p))
}

/// Repairs a Claude command that is a wrapper pointing nowhere.
pub fn repair_claude(command: PathBuf, env: &dyn EnvLookup) -> PathBuf {
    if broken_wrapper_target(&command, env.home().as_deref()).is_some() {
        if let Some(r) = claude_wrapper_replacement(&command, env) {
            log::warn!(target: "providers", "Claude CLI wrapper missing target; falling back to alternate command wrapper={} fallback={}", command.display(), r.display());
            return r;
        }
    }
    command
}

/// The first `N.N.N[-suffix]` (or `N.N` as `N.N.0`) in a version banner.
pub fn extract_version(text: &str) -> Option<String> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    let b = t.as_bytes();
    let digits = |mut i: usize| {
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        (i > s).then_some(i)
    };
    // N.N.N with optional suffix
    for start in 0..b.len() {
        if !b[start].is_ascii_digit() || (start > 0 && b[start - 1].is_ascii_digit()) {
            continue;
        }
        let Some(e1) = digits(start) else { continue };
        if e1 >= b.len() || b[e1] != b'.' {
            continue;
        }
        let Some(e2) = digits(e1 + 1) else { continue };
        if e2 >= b.len() || b[e2] != b'.' {
            continue;
        }
        let Some(mut e3) = digits(e2 + 1) else {
            continue;
        };
        if e3 < b.len() && (b[e3] == b'-' || b[e3] == b'+') {
            let s = e3 + 1;
            let mut j = s;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.' || b[j] == b'-') {
                j += 1;
            }
            if j > s {
                e3 = j;
            }
        }
        return Some(t[start..e3].to_string());
    }
    for start in 0..b.len() {
        if !b[start].is_ascii_digit() || (start > 0 && b[start - 1].is_ascii_digit()) {
            continue;
        }
        let Some(e1) = digits(start) else { continue };
        if e1 < b.len() && b[e1] == b'.' {
            if let Some(e2) = digits(e1 + 1) {
                return Some(format!("{}.0", &t[start..e2]));
            }
        }
    }
    None
}

/// Semver-ish comparison (providers.md §2.4). Non-numeric main parts compare equal.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn split(v: &str) -> (&str, Option<&str>) {
        let v = v
            .strip_prefix('v')
            .or_else(|| v.strip_prefix('V'))
            .unwrap_or(v);
        match v.split_once('-') {
            Some((m, p)) => (m, Some(p)),
            None => (v, None),
        }
    }
    fn nums(m: &str) -> Option<Vec<u64>> {
        m.split('.')
            .map(|p| {
                let d: String = p.chars().take_while(|c| c.is_ascii_digit()).collect();
                d.parse().ok()
            })
            .collect()
    }
    let (ma, pa) = split(a);
    let (mb, pb) = split(b);
    let (Some(na), Some(nb)) = (nums(ma), nums(mb)) else {
        return Ordering::Equal;
    };
    for i in 0..na.len().max(nb.len()) {
        let x = na.get(i).copied().unwrap_or(0);
        let y = nb.get(i).copied().unwrap_or(0);
        if x != y {
            return x.cmp(&y);
        }
    }
    match (pa, pb) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => x.cmp(y),
    }
}

/// Runs `<command> <args>` with the scrubbed environment and a timeout; (ok, stdout, stderr,
/// error message).
pub fn probe(command: &Path, args: &[&str], timeout: Duration, stop: &ProbeStop) -> ProbeOutput {
    let mut spec = exec::Spec::new(command).args(args.iter().copied());
    spec.timeout = Some(timeout);
    spec.capture_limit = 1 << 20;
    spec.grace = Duration::from_millis(500);
    probe_spec(spec, command, args, stop)
}

/// [`probe`] with a prepared spec (for an augmented environment), stopped by `stop`.
pub fn probe_spec(
    mut spec: exec::Spec,
    command: &Path,
    args: &[&str],
    stop: &ProbeStop,
) -> ProbeOutput {
    let line = format!("{} {}", command.display(), args.join(" "));
    if stop.token.is_cancelled() {
        return ProbeOutput::stopped(&line);
    }
    stop.arm(&mut spec);
    let limit_secs = spec.timeout.map(|t| t.as_secs_f64()).unwrap_or(0.0);
    match exec::run(spec, None) {
        Err(e) => ProbeOutput {
            ok: false,
            stdout: String::new(),
            stderr: String::new(),
            exit_code: None,
            duration: Duration::ZERO,
            error: Some(e.to_string()),
        },
        Ok(o) => {
            let error = if matches!(o.stop, exec::Stop::Cancelled | exec::Stop::Killed) {
                Some(format!("`{line}` was stopped: the gateway is stopping"))
            } else if o.timed_out() {
                Some(format!(
                    "`{line}` did not finish within {limit_secs} s; the CLI may be waiting for input or a login"
                ))
            } else if o.exit_code != Some(0) {
                let err = o.stderr_lossy();
                let first = err.trim().lines().next().unwrap_or("").to_string();
                Some(match (o.exit_code, first.is_empty()) {
                    (Some(c), true) => format!("`{line}` exited with status {c}"),
                    (Some(c), false) => format!("`{line}` exited with status {c}: {first}"),
                    (None, _) => format!(
                        "`{line}` was killed by signal {}",
                        o.signal.unwrap_or_default()
                    ),
                })
            } else {
                None
            };
            ProbeOutput {
                ok: error.is_none(),
                stdout: o.stdout_lossy(),
                stderr: o.stderr_lossy(),
                exit_code: o.exit_code,
                duration: o.duration,
                error,
            }
        }
    }
}

/// The outcome of one probe command.
#[derive(Debug, Clone)]
pub struct ProbeOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    /// For the `--version` answer diagnostics reuse.
    pub exit_code: Option<i32>,
    pub duration: Duration,
    pub error: Option<String>,
}

impl ProbeOutput {
    /// A probe that did not run: the gateway is stopping.
    fn stopped(line: &str) -> ProbeOutput {
        ProbeOutput {
            ok: false,
            stdout: String::new(),
            stderr: String::new(),
            exit_code: None,
            duration: Duration::ZERO,
            error: Some(format!("`{line}` did not run: the gateway is stopping")),
        }
    }

    /// stdout, a newline, stderr, lowercased: what flag detection searches.
    pub fn help_text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr).to_lowercase()
    }
}

/// When discovery found nothing, asks the login shell what the name means (2 s limit) so the
/// person learns why: an alias or function (never used by the gateway), or a file outside
/// the gateway's PATH. Advisory only: the answer is never executed.
pub fn shell_hint(id: ProviderId, env: &dyn EnvLookup, stop: &ProbeStop) -> Option<String> {
    let shell = env.var("SHELL").filter(|s| !s.is_empty())?;
    if stop.token.is_cancelled() {
        return None;
    }
    let mut spec = exec::Spec::new(PathBuf::from(&shell))
        .arg("-lc")
        .arg(format!("type -a {}", id.bare_name()));
    spec.timeout = Some(Duration::from_millis(2000));
    spec.grace = Duration::from_millis(200);
    spec.capture_limit = 64 * 1024;
    stop.arm(&mut spec);
    let out = exec::run(spec, None).ok()?;
    if out.stop != exec::Stop::None {
        return None;
    }
    let text = format!("{}\n{}", out.stdout_lossy(), out.stderr_lossy());
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let env_var = format!("PANORAMA_{}_CLI", id.bare_name().to_uppercase());
    let fix = format!("set {env_var} or pass --{}-cli <path>", id.bare_name());
    for (article, kind) in [("an", "alias"), ("a", "function")] {
        if lines.iter().any(|l| l.contains(kind)) {
            return Some(format!(
                "your shell defines \"{}\" as {article} {kind}, but the gateway does not load shell aliases or functions; {fix}",
                id.bare_name()
            ));
        }
    }
    lines.iter().find_map(|l| {
        let (_, path) = l.split_once(" is /")?;
        Some(format!(
            "your shell resolves \"{}\" to /{}, but that directory is not on the gateway's PATH; {fix}",
            id.bare_name(),
            path.trim()
        ))
    })
}

/// Chooses the command for one provider (providers.md §2.3); `stop` ends its probes.
pub fn discover_one(
    id: ProviderId,
    override_: Option<&Path>,
    env: &dyn EnvLookup,
    stop: &ProbeStop,
) -> Discovered {
    if let Some(o) = override_.filter(|o| !o.as_os_str().is_empty()) {
        let command = if id == ProviderId::Claude {
            repair_claude(o.to_path_buf(), env)
        } else {
            o.to_path_buf()
        };
        let p = probe(&command, &["--version"], DISCOVERY_PROBE_TIMEOUT, stop);
        if !p.ok {
            log::warn!(target: "providers", "{} CLI override failed version check command={} error={}", id.label(), command.display(), p.error.as_deref().unwrap_or(""));
        }
        let version =
            p.ok.then(|| extract_version(&format!("{}\n{}", p.stdout, p.stderr)))
                .flatten();
        return Discovered {
            command,
            version,
            source: Source::Override,
        };
    }
    let mut best: Option<Discovered> = None;
    for cand in candidates(id, env) {
        let cand = if id == ProviderId::Claude {
            repair_claude(cand, env)
        } else {
            cand
        };
        let p = probe(&cand, &["--version"], DISCOVERY_PROBE_TIMEOUT, stop);
        if !p.ok {
            log::debug!(target: "providers", "candidate failed version check provider={} command={} error={}", id.as_str(), cand.display(), p.error.as_deref().unwrap_or(""));
            continue;
        }
        let version = extract_version(&format!("{}\n{}", p.stdout, p.stderr));
        let better = match &best {
            None => true,
            Some(b) => match (&b.version, &version) {
                (None, Some(_)) => true,
                (Some(bv), Some(v)) => compare_versions(v, bv) == std::cmp::Ordering::Greater,
                _ => false,
            },
        };
        if better {
            best = Some(Discovered {
                command: cand,
                version,
                source: Source::Detected,
            });
        }
    }
    best.unwrap_or_else(|| Discovered {
        command: PathBuf::from(id.bare_name()),
        version: None,
        source: Source::Fallback,
    })
}

#[cfg(test)]
mod tests;
