//! Who may use the remote shell: the gateway-side machine-control layers (§7.2 step 2) and the
//! remote shell resource checks in the reference's order (§7.3).

use serde_json::Value;

use crate::backend::resources::{RemoteShellRows, RowsError};
use crate::jobs::{control, JobContext};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    Write,
}

/// Machine control at the moment of use ([`control::machine_control_now`]: the team toggle read
/// from the backend now, the install toggle from gateway.json now), or for actions that only
/// look, with the team toggle as last read ([`control::machine_control_last_read`]). A layer
/// that is off also closes the open sessions; a team toggle that could not be read denies but
/// leaves them (a passing network error is not a switch-off).
pub(super) fn machine_control(ctx: &JobContext, now: bool) -> Result<(), &'static str> {
    let checked = if now {
        control::machine_control_now(ctx)
    } else {
        control::machine_control_last_read(ctx)
    };
    match checked {
        Ok(_) => Ok(()),
        Err(d) => {
            if ctx.session.is_some() && d.message != control::UNAVAILABLE {
                ctx.shell_sessions.enforce_control(d.state);
            }
            Err(d.message)
        }
    }
}

/// Remote shell resource checks in the reference's order (§7.3). Err = the message.
pub(super) fn check_resource(
    ctx: &JobContext,
    resource_id: &str,
    access: Access,
) -> Result<(), String> {
    let Some(reader) = ctx.resources.as_deref() else {
        return Err("Failed to load remote shell resource".into());
    };
    let rows = match reader.remote_shell_rows(resource_id) {
        Ok(rows) => rows,
        Err(RowsError::Resource(e)) => {
            log::warn!(target: "shell", "reading remote shell resource {resource_id} failed: {e}");
            return Err("Failed to load remote shell resource".into());
        }
        Err(RowsError::Gateway(e)) => {
            if let Some(e) = e {
                log::warn!(target: "shell", "reading the gateway row failed: {e}");
            }
            return Err("Failed to load gateway identity for remote shell resource".into());
        }
    };
    judge(&rows, reader.team_id(), reader.gateway_id(), access)
}

/// The checks on the rows read.
fn judge(rows: &RemoteShellRows, team: &str, gw: &str, access: Access) -> Result<(), String> {
    let Some(gate) = &rows.gateway else {
        return Err("Gateway identity is missing".into());
    };
    let Some(row) = &rows.resource else {
        return Err("Remote shell resource not found".into());
    };
    if row.get("team_id").and_then(Value::as_str) != Some(team) {
        return Err("Remote shell resource belongs to another team".into());
    }
    let rtype = row
        .get("resource_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    if rtype != "remote_shell" {
        return Err(format!(
            "Resource is not a remote shell target (found {rtype})"
        ));
    }
    if access == Access::Write
        && row.get("max_access_level").and_then(Value::as_str) == Some("viewer")
    {
        return Err("Remote shell resource is configured for viewer access. Full access is required for this action.".into());
    }
    let meta = row.get("metadata").cloned().unwrap_or(Value::Null);
    let trimmed = |k: &str| {
        meta.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    if let Some(vm) = trimmed("vm_id") {
        let mine = gate
            .get("vm_id")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty());
        if mine != Some(vm.as_str()) {
            return Err("Remote shell resource targets a different VM-backed gateway".into());
        }
    } else {
        match trimmed("gateway_id") {
            None => {
                return Err(
                    "Remote shell resource is missing metadata.gateway_id or metadata.vm_id".into(),
                )
            }
            Some(g) if g != gw => {
                return Err("Remote shell resource targets a different gateway".into())
            }
            Some(_) => {}
        }
    }
    if meta.get("full_control") != Some(&Value::Bool(true)) {
        return Err("Remote shell resource machine control is disabled".into());
    }
    Ok(())
}
