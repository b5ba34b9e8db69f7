//! The one door through which job values reach a CLI's command line (issue 8).
//!
//! Every argv of every CLI (model runs, subagent runs) is built with [`Argv`]:
//! - options are fixed `&'static str` names chosen by the gateway, never job text;
//! - every value is written in the same element as its option (`--flag=value`), so a value
//!   that starts with `-` can never be read as an option, and an option with an optional or
//!   variadic value (`--resume [id]`, `--betas <b...>`) cannot swallow or spill arguments;
//! - the prompt never goes on the command line: it is written to the CLI's standard input
//!   (claude `--print`, codex `exec -`, gemini read it there), which also keeps it out of
//!   `/proc/<pid>/cmdline`;
//! - values are checked by kind: ids are UUIDs, tool/beta/extension names a strict
//!   character set, models the documented model-name set, choices a fixed list, free text
//!   has no NUL. Anything else is an [`InputError`] naming the field, which fails the job
//!   and leaves provider health alone.

use std::fmt;

/// A job value that cannot be given to a CLI. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<InputError> for String {
    fn from(e: InputError) -> String {
        e.0
    }
}

/// A short, printable quote of a hostile value for an error message.
fn quote(v: &str) -> String {
    let q: String = v.chars().take(60).collect();
    let more = if v.chars().count() > 60 { "…" } else { "" };
    format!("{:?}{more}", q)
}

fn bad(field: &str, v: &str, why: &str) -> InputError {
    InputError(format!(
        "Invalid {field} {}: {why}. Fix {field} and submit the job again.",
        quote(v)
    ))
}

/// Free text (prompts, system prompts, schemas): anything but NUL, which no CLI can take.
pub fn text(field: &str, v: &str) -> Result<(), InputError> {
    if v.contains('\0') {
        return Err(InputError(format!(
            "Invalid {field}: it contains a NUL character, which cannot be passed to a CLI. Remove it and submit the job again."
        )));
    }
    Ok(())
}

/// Model names as documented in docs/README-providers.md: 1–200 characters, starting with a
/// letter or digit, then letters, digits and `. _ - : / @ [ ] +`.
pub fn model(field: &str, v: &str) -> Result<(), InputError> {
    let ok = v.len() <= 200
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/@[]+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            v,
            "a model name is letters, digits and . _ - : / @ [ ] +, starting with a letter or digit",
        ))
    }
}

/// Tool, beta and extension names: 1–128 characters, a letter or digit first, then letters,
/// digits, `_`, `.` and `-`.
pub fn name(field: &str, v: &str) -> Result<(), InputError> {
    let ok = v.len() <= 128
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            v,
            "a name is letters, digits, '_', '.' and '-', starting with a letter or digit",
        ))
    }
}

/// Session and resume ids: UUIDs of any version (Codex's thread ids are version 7): 32 hex
/// digits in the 8-4-4-4-12 shape, so never an option, a path or more than one argument.
pub fn uuid(field: &str, v: &str) -> Result<(), InputError> {
    if crate::util::is_uuid(v) {
        Ok(())
    } else {
        Err(bad(field, v, "it must be a UUID"))
    }
}

/// One of a fixed list (compared exactly).
pub fn choice(field: &str, v: &str, allowed: &[&str]) -> Result<(), InputError> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(bad(
            field,
            v,
            &format!("it must be one of {}", allowed.join(", ")),
        ))
    }
}

/// An argv under construction. Only the gateway's own constants become options.
#[derive(Debug, Default, Clone)]
pub struct Argv(Vec<String>);

impl Argv {
    pub fn new(fixed: &[&'static str]) -> Argv {
        Argv(fixed.iter().map(|s| s.to_string()).collect())
    }

    /// A bare option or a fixed word (`--print`, `exec`, `-`).
    pub fn flag(&mut self, f: &'static str) -> &mut Self {
        self.0.push(f.to_string());
        self
    }

    /// `--flag=value` with a value the gateway chose itself (not from a job).
    pub fn fixed(&mut self, f: &'static str, v: &'static str) -> &mut Self {
        self.0.push(format!("{f}={v}"));
        self
    }

    fn push(&mut self, f: &'static str, v: &str) {
        debug_assert!(f.starts_with("--"), "{f}: values go with long options");
        self.0.push(format!("{f}={v}"));
    }

    /// `--flag=<free text>` (system prompts, schemas, numbers the gateway formatted).
    pub fn text(&mut self, f: &'static str, field: &str, v: &str) -> Result<(), InputError> {
        text(field, v)?;
        self.push(f, v);
        Ok(())
    }

    pub fn model(&mut self, f: &'static str, field: &str, v: &str) -> Result<(), InputError> {
        model(field, v)?;
        self.push(f, v);
        Ok(())
    }

    pub fn uuid(&mut self, f: &'static str, field: &str, v: &str) -> Result<(), InputError> {
        uuid(field, v)?;
        self.push(f, v);
        Ok(())
    }

    /// A session id where the CLI takes it only as an argument of its own
    /// (`codex exec resume <id>`). Checked as a UUID first: hex digits and dashes, starting
    /// with a hex digit, it can never be read as an option.
    pub fn id_argument(&mut self, field: &str, v: &str) -> Result<(), InputError> {
        uuid(field, v)?;
        self.0.push(v.to_string());
        Ok(())
    }

    pub fn choice(
        &mut self,
        f: &'static str,
        field: &str,
        v: &str,
        allowed: &[&str],
    ) -> Result<(), InputError> {
        choice(field, v, allowed)?;
        self.push(f, v);
        Ok(())
    }

    /// One of a fixed list, written through `render` (codex's `--config=key="value"`).
    pub fn choice_as(
        &mut self,
        f: &'static str,
        field: &str,
        v: &str,
        allowed: &[&str],
        render: impl Fn(&str) -> String,
    ) -> Result<(), InputError> {
        choice(field, v, allowed)?;
        self.push(f, &render(v));
        Ok(())
    }

    /// `--flag=a,b,c`: one element, every item a strict name (so no item carries a comma,
    /// a space or a leading dash).
    pub fn names(
        &mut self,
        f: &'static str,
        field: &str,
        items: &[String],
    ) -> Result<(), InputError> {
        for i in items {
            name(field, i)?;
        }
        self.push(f, &items.join(","));
        Ok(())
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

/// The prompt bytes for standard input.
pub fn stdin_prompt(field: &str, prompt: &str) -> Result<Vec<u8>, InputError> {
    text(field, prompt)?;
    Ok(prompt.as_bytes().to_vec())
}

/// Values that must never become an option, a path or a command (for the argv tests).
#[cfg(test)]
pub fn hostile_values() -> Vec<String> {
    [
        r#"--mcp-config={"mcpServers":{"x":{"command":"sh","args":["-c","touch M"]}}}"#,
        "--mcp-config",
        "-c",
        "--",
        "-p",
        "-",
        "--resume",
        "a\nb",
        "x\n--mcp-config=y",
        "a\0b",
        "a b",
        "a,--x",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators_accept_real_values_and_refuse_options() {
        for m in [
            "claude-sonnet-4-5-20250929",
            "sonnet[1m]",
            "gpt-5-codex",
            "gemini-2.5-pro",
            "models/gemini-2.5-pro",
            "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
            "openai/gpt-4o@2024",
        ] {
            assert_eq!(model("model", m), Ok(()), "{m}");
        }
        for t in ["WebSearch", "mcp__server__tool", "context-1m-2025-08-07"] {
            assert_eq!(name("config.betas", t), Ok(()), "{t}");
        }
        for hostile in super::hostile_values() {
            assert!(model("model", &hostile).is_err(), "{hostile:?}");
            assert!(name("config.betas", &hostile).is_err(), "{hostile:?}");
            assert!(uuid("config.session_id", &hostile).is_err(), "{hostile:?}");
        }
        let e = model("model", "-c").unwrap_err().0;
        assert!(e.starts_with("Invalid model \"-c\": "), "{e}");
        let e = text("prompt", "a\0b").unwrap_err().0;
        assert!(e.contains("Invalid prompt: it contains a NUL"), "{e}");
    }

    #[test]
    fn values_share_their_option_element() {
        let mut a = Argv::new(&["--print"]);
        a.text("--system-prompt", "config.system_prompt", "--mcp-config=x")
            .unwrap();
        a.names("--betas", "config.betas", &["b1".into(), "b2".into()])
            .unwrap();
        assert_eq!(
            a.into_vec(),
            ["--print", "--system-prompt=--mcp-config=x", "--betas=b1,b2"]
        );
    }
}
