//! What a model call looks like before and after it runs: the request, the plan (argv, files,
//! env, output mode) and the normalised result, plus the helpers that fit a CLI's words into a
//! message. Reading the output itself (JSON extraction, stream events) is in `normalize.rs`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::util::truncate_chars;

/// The sentinel model: no `--model` argument is passed.
pub const DEFAULT_MODEL: &str = "__default__";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    Text,
}

/// How the answer comes back (names follow the wire's `stdout-json`/`file-json`/`stream-json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)]
pub enum OutputMode {
    /// stdout is the answer (one JSON envelope, or text).
    StdoutJson,
    /// The CLI writes the answer to a file in the work directory (codex `-o`).
    FileJson,
    /// stdout is JSONL events (codex `--json`).
    StreamJson,
}

impl OutputMode {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputMode::StdoutJson => "stdout-json",
            OutputMode::FileJson => "file-json",
            OutputMode::StreamJson => "stream-json",
        }
    }
}

/// A model call, already validated.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub prompt: String,
    pub model: String,
    pub format: OutputFormat,
    pub schema: Option<Value>,
    pub append_system_prompt: Option<String>,
    /// `low` | `medium` | `high`.
    pub reasoning_effort: Option<String>,
    pub timeout: Duration,
}

impl RunRequest {
    pub fn model_arg(&self) -> Option<&str> {
        (self.model != DEFAULT_MODEL && !self.model.is_empty()).then_some(self.model.as_str())
    }

    /// The JSON schema as compact JSON (what the CLIs are given); a JSON run needs one.
    pub fn schema_text(&self, cli: &str) -> Result<String, super::argv::InputError> {
        let schema = self.schema.as_ref().ok_or_else(|| {
            super::argv::InputError(format!("{cli} JSON model run requires a schema"))
        })?;
        let s = serde_json::to_string(schema)
            .map_err(|e| super::argv::InputError(format!("Invalid json_schema: {e}")))?;
        super::argv::text("json_schema", &s)?;
        Ok(s)
    }
}

/// The exact command to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub command: PathBuf,
    pub args: Vec<String>,
    /// The prompt, written to the CLI's standard input (never an argument: see `argv`).
    pub stdin: Vec<u8>,
    /// Files written into the work directory (relative name, contents), mode 0600.
    pub files: Vec<(String, Vec<u8>)>,
    /// Extra environment; `{WORKDIR}` in a value becomes the work directory.
    pub env: Vec<(String, String)>,
    /// Directories prepended to PATH (gemini: its own directory).
    pub path_prepend: Vec<PathBuf>,
    pub output_mode: OutputMode,
    /// Relative path of the output file in file mode.
    pub output_path: Option<String>,
    pub format: OutputFormat,
    /// Length of the schema's JSON (after codex normalisation), or 0.
    pub json_schema_chars: usize,
    pub timeout: Duration,
    /// Run in a directory shared by this CLI's runs (`<parent of the work dir>/.<cli>-cwd`)
    /// instead of the per-run work directory: a CLI that keeps state per working directory
    /// (Gemini: `~/.gemini/tmp/<dir>`, `history/<dir>`, `projects.json`) then keeps one set,
    /// not one per job. Its files are still in the work directory, named by absolute paths.
    pub shared_cwd: bool,
    /// A session the CLI keeps whatever it is asked (Gemini), named by the gateway so that it
    /// is removed after the run: a model run or a health check is never continued.
    pub discard_session: Option<String>,
}

impl Plan {
    /// `command args` answering on stdout, with no files, no extra environment and no schema;
    /// each CLI sets what it needs on top (`Plan { files, ..Plan::stdout(…) }`).
    pub fn stdout(req: &RunRequest, command: &std::path::Path, args: Vec<String>) -> Plan {
        Plan {
            command: command.to_path_buf(),
            args,
            stdin: Vec::new(),
            files: Vec::new(),
            env: Vec::new(),
            path_prepend: Vec::new(),
            output_mode: OutputMode::StdoutJson,
            output_path: None,
            format: req.format,
            json_schema_chars: 0,
            timeout: req.timeout,
            shared_cwd: false,
            discard_session: None,
        }
    }
}

/// The normalised output of a successful run.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub output: Value,
    pub raw: Value,
    pub usage: Value,
    pub model: Value,
}

impl Parsed {
    pub fn text(stdout: &str) -> Parsed {
        let t = Value::String(stdout.trim().to_string());
        let obj = Value::Object(Map::from_iter([("text".to_string(), t)]));
        Parsed {
            output: obj.clone(),
            raw: obj,
            usage: Value::Null,
            model: Value::Null,
        }
    }
}

/// Why the output could not be used.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseError {
    /// The output was not what the CLI should print; the provider is marked unhealthy.
    Bad(String),
    /// An output file exceeded the limit (boundary `output_file`); health is unchanged.
    OutputLimit,
}

impl ParseError {
    pub fn bad(m: impl Into<String>) -> Self {
        ParseError::Bad(m.into())
    }
}

/// Whitespace collapsed, at most `max` characters plus `...`.
pub fn collapse(s: &str, max: usize) -> String {
    let c = s.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_chars(&c, max, "...")
}

/// Whitespace collapsed and, past `max` characters, cut at the last word boundary with `…`
/// (a message shown to a person is never cut mid-word).
pub fn shorten(s: &str, max: usize) -> String {
    let c = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match c.char_indices().nth(max) {
        None => c,
        Some((i, _)) => {
            let head = &c[..i];
            let cut = head.rfind(' ').filter(|&j| j > i / 2).unwrap_or(i);
            format!("{}…", head[..cut].trim_end_matches([',', ';', ':', ' ']))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_cuts_between_words() {
        assert_eq!(shorten("a  b", 10), "a b");
        assert_eq!(
            shorten("Please set an Auth method in your settings", 20),
            "Please set an Auth…"
        );
        assert_eq!(shorten("abcdefghijklmnopqrstuvwxyz", 10), "abcdefghij…");
    }

    #[test]
    fn collapse_limits_and_marks() {
        assert_eq!(collapse("a \n b", 10), "a b");
        assert_eq!(collapse("abcdef", 3), "abc...");
    }
}
