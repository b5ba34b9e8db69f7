//! Restricted means restricted (issue 8, docs/README-subagents.md "Restricted mode").
//!
//! Machine control (a CLI that may run commands or write files) needs all three layers on:
//! the subagent's own `config.full_control`, the team's machine-control toggle in Team
//! Integrations, and the host's install toggle (`panorama-gateway full-control enable`).
//! Without all three a run is *restricted*, and this module is the one place that says what
//! a restricted run may ask for, for all three CLIs:
//! - [`check_request`]: a permission mode or a tool that runs commands or writes files is
//!   refused, with a message naming the layers that are off;
//! - [`check_argv`]: the finished argv of a restricted run is scanned for every elevated
//!   option of every CLI (claude bypass/acceptEdits/skip-permissions, codex
//!   danger-full-access/bypass/shell tool, gemini yolo/auto_edit) before anything starts.

use super::argv::InputError;
use super::subplan::SubagentRequest;

/// Which machine-control layers are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layers {
    /// `subagents.config.full_control`.
    pub resource: bool,
    /// `team_gateways.full_control_enabled` (Team Integrations).
    pub team: bool,
    /// `full_control_enabled` in gateway.json (the host's install toggle).
    pub install: bool,
}

impl Layers {
    /// The layers that are off, named as a person finds them.
    pub fn off(&self) -> String {
        let mut off = Vec::new();
        if !self.resource {
            off.push("the subagent's machine control (config.full_control is not true)");
        }
        if !self.team {
            off.push("the team's machine control (Team Integrations)");
        }
        if !self.install {
            off.push("the host's machine control (run \"panorama-gateway full-control enable\" on the host)");
        }
        if off.is_empty() {
            "none (elevated mode is unavailable on this host)".into()
        } else {
            off.join("; ")
        }
    }
}

/// Permission modes a restricted run may use: none of them lets the CLI act unasked.
pub const RESTRICTED_MODES: &[&str] = &["default", "dontAsk", "plan"];
/// Tools a restricted run may allow: they read and search, never run or write.
pub const RESTRICTED_TOOLS: &[&str] = &[
    "WebSearch",
    "WebFetch",
    "Read",
    "Glob",
    "Grep",
    "LS",
    "NotebookRead",
    "TodoWrite",
];

fn refusal(what: String, layers: &Layers) -> InputError {
    InputError(format!(
        "{what} lets the CLI run commands or write files, which needs machine control, and a restricted subagent does not have it. Layers that are off: {}. Turn them on, or remove it from the subagent's config.",
        layers.off()
    ))
}

/// Refuses what a restricted run may not ask for. `Ok` for effective full control.
pub fn check_request(req: &SubagentRequest, layers: &Layers) -> Result<(), InputError> {
    if req.full {
        return Ok(());
    }
    if let Some(m) = &req.permission_mode {
        if !RESTRICTED_MODES.contains(&m.as_str()) {
            return Err(refusal(format!("config.permission_mode {m:?}"), layers));
        }
    }
    for t in &req.allowed_tools {
        let web = matches!(
            t.to_ascii_lowercase().as_str(),
            "web__search" | "web_search" | "websearch"
        );
        if !web && !RESTRICTED_TOOLS.contains(&t.as_str()) {
            return Err(refusal(
                format!(
                    "config.allowed_tools item {t:?} (a restricted run may allow only {})",
                    RESTRICTED_TOOLS.join(", ")
                ),
                layers,
            ));
        }
    }
    Ok(())
}

/// Options that give a CLI machine control, as the builders write them (`--flag=value`) and
/// as they could appear split (`--flag value`).
const ELEVATED: &[&str] = &[
    // claude
    "--dangerously-skip-permissions",
    "--allow-dangerously-skip-permissions",
    "--permission-mode=bypassPermissions",
    "--permission-mode=acceptEdits",
    "--mcp-config",
    "--settings",
    "--plugin-dir",
    "--add-dir",
    // codex
    "--dangerously-bypass-approvals-and-sandbox",
    "--sandbox=danger-full-access",
    "--sandbox=workspace-write",
    "--full-auto",
    "--config=features.shell_tool=true",
    // gemini
    "--yolo",
    "--approval-mode=yolo",
    "--approval-mode=auto_edit",
];

/// The last line of defence: a restricted argv that carries an elevated option, or allows a
/// tool outside [`RESTRICTED_TOOLS`], is refused before anything starts.
pub fn check_argv(args: &[String]) -> Result<(), String> {
    // The one `--settings` a restricted run has: the gateway's own copy of the user's login
    // keys (`apiKeyHelper`, `env`), which `--setting-sources local` would hide.
    let auth = format!("--settings={}", super::claude::AUTH_SETTINGS_FILE);
    for a in args.iter().filter(|a| **a != auth) {
        let hit = ELEVATED.iter().find(|e| {
            a == *e || (a.starts_with(*e) && !e.contains('=') && a[e.len()..].starts_with('='))
        });
        if let Some(e) = hit {
            return Err(format!(
                "Refusing to start a restricted run whose command line has {e}; this is a gateway bug, please report it"
            ));
        }
        for f in ["--allowedTools=", "--tools="] {
            if let Some(list) = a.strip_prefix(f) {
                if let Some(t) = list
                    .split(',')
                    .find(|t| !t.is_empty() && !RESTRICTED_TOOLS.contains(t))
                {
                    return Err(format!(
                        "Refusing to start a restricted run that allows the tool {t:?}; this is a gateway bug, please report it"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elevated_asks_are_refused_naming_the_layers_that_are_off() {
        let layers = Layers {
            resource: false,
            team: true,
            install: false,
        };
        let mut req = SubagentRequest {
            permission_mode: Some("bypassPermissions".into()),
            ..Default::default()
        };
        let e = check_request(&req, &layers).unwrap_err().0;
        assert!(
            e.starts_with("config.permission_mode \"bypassPermissions\" lets the CLI run commands"),
            "{e}"
        );
        assert!(e.contains("config.full_control is not true"), "{e}");
        assert!(e.contains("full-control enable"), "{e}");
        assert!(!e.contains("Team Integrations"), "{e}");
        req.permission_mode = Some("acceptEdits".into());
        assert!(check_request(&req, &layers).is_err());
        req.permission_mode = Some("dontAsk".into());
        for tool in [
            "Bash",
            "Write",
            "Edit",
            "MultiEdit",
            "NotebookEdit",
            "mcp__x__y",
        ] {
            req.allowed_tools = vec!["WebSearch".into(), tool.into()];
            let e = check_request(&req, &layers).unwrap_err().0;
            assert!(e.contains(&format!("{tool:?}")), "{e}");
        }
        req.allowed_tools = vec!["web_search".into(), "Read".into()];
        assert_eq!(check_request(&req, &layers), Ok(()));
        req.full = true;
        req.allowed_tools = vec!["Bash".into()];
        req.permission_mode = Some("bypassPermissions".into());
        assert_eq!(check_request(&req, &layers), Ok(()));
    }

    #[test]
    fn restricted_argv_guard_finds_every_elevated_option() {
        for e in ELEVATED {
            assert!(check_argv(&[e.to_string()]).is_err(), "{e}");
        }
        assert!(check_argv(&["--mcp-config={}".into()]).is_err());
        assert!(check_argv(&["--allowedTools=WebSearch,Bash".into()]).is_err());
        assert!(check_argv(&[
            "--print".into(),
            "--permission-mode=dontAsk".into(),
            "--allowedTools=WebSearch".into(),
            "--sandbox=read-only".into(),
            "--approval-mode=plan".into(),
            "--config=features.shell_tool=false".into(),
        ])
        .is_ok());
    }
}
