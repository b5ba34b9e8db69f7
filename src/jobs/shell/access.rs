//! Who may use the remote shell: the gateway-side machine-control layers (§7.2 step 2) and the
//! remote shell resource checks in the reference's order (§7.3).

use serde_json::Value;

use crate::backend::resources::RemoteShellRows;
use crate::jobs::control::{self, Denied};
use crate::jobs::JobContext;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    Write,
}

/// Why an action that acts on the machine may not: a machine-control layer (reported first),
/// or the resource.
pub(super) enum Refusal {
    Control(&'static str),
    Resource(String),
}

/// A layer that is off also closes the open sessions; a team toggle that could not be read
/// denies but leaves them (a passing network error is not a switch-off).
fn deny(ctx: &JobContext, d: Denied) -> &'static str {
    if ctx.session.is_some() && d.message != control::UNAVAILABLE {
        ctx.shell_sessions.enforce_control(d.state);
    }
    d.message
}

/// Machine control for actions that only look (`shell_session` read/status), with the team
/// toggle as last read after a heartbeat ([`control::machine_control_last_read`]: no request).
pub(super) fn machine_control_last_read(ctx: &JobContext) -> Result<(), &'static str> {
    control::machine_control_last_read(ctx)
        .map(|_| ())
        .map_err(|d| deny(ctx, d))
}

/// For actions that act on the machine (`shell_exec`, `shell_session` open/write/resize):
/// every machine-control layer read now, then the resource checks (§7.3), from one parallel
/// read of this gateway's row (the team toggle, its `vm_id`) and the resource's row. `rid`
/// None (the payload's resource id is unusable, which the caller reports after machine
/// control): machine control only. `read`: those rows already read for `rid` alongside the
/// claim (`jobs::Prefetch`), judged as if read here; None reads them now.
pub(super) fn check_now(
    ctx: &JobContext,
    rid: Option<&str>,
    access: Access,
    read: Option<RemoteShellRows>,
) -> Result<(), Refusal> {
    let Some(reader) = ctx.resources.as_deref() else {
        return Err(Refusal::Control(control::UNAVAILABLE));
    };
    let rows = read.unwrap_or_else(|| reader.remote_shell_rows(rid));
    let team = match &rows.gateway {
        Ok(Some(row)) => Some(row.get("full_control_enabled") == Some(&Value::Bool(true))),
        Ok(None) => {
            log::warn!(target: "shell", "machine control denied: this gateway's team_gateways row is missing");
            None
        }
        Err(e) => {
            let e = e
                .as_ref()
                .map_or("the reading thread did not come back".into(), |e| {
                    e.to_string()
                });
            log::warn!(target: "shell", "machine control denied: reading the team toggle failed: {e}");
            None
        }
    };
    if let Err(d) = control::machine_control_with_team(ctx, team) {
        return Err(Refusal::Control(deny(ctx, d)));
    }
    match rid {
        None => Ok(()),
        Some(rid) => judge_read(&rows, rid, reader.team_id(), reader.gateway_id(), access)
            .map_err(Refusal::Resource),
    }
}

/// Remote shell resource checks in the reference's order (§7.3), for actions that only look.
/// Err = the message.
pub(super) fn check_resource(
    ctx: &JobContext,
    resource_id: &str,
    access: Access,
) -> Result<(), String> {
    let Some(reader) = ctx.resources.as_deref() else {
        return Err("Failed to load remote shell resource".into());
    };
    let rows = reader.remote_shell_rows(Some(resource_id));
    judge_read(
        &rows,
        resource_id,
        reader.team_id(),
        reader.gateway_id(),
        access,
    )
}

/// The read failures in the reference's order, then the checks on the rows read.
fn judge_read(
    rows: &RemoteShellRows,
    resource_id: &str,
    team: &str,
    gw: &str,
    access: Access,
) -> Result<(), String> {
    let resource = match &rows.resource {
        Ok(r) => r.as_ref(),
        Err(e) => {
            log::warn!(target: "shell", "reading remote shell resource {resource_id} failed: {e}");
            return Err("Failed to load remote shell resource".into());
        }
    };
    let gateway = match &rows.gateway {
        Ok(g) => g.as_ref(),
        Err(e) => {
            if let Some(e) = e {
                log::warn!(target: "shell", "reading the gateway row failed: {e}");
            }
            return Err("Failed to load gateway identity for remote shell resource".into());
        }
    };
    judge(gateway, resource, team, gw, access)
}

/// The checks on the rows read.
fn judge(
    gate: Option<&Value>,
    row: Option<&Value>,
    team: &str,
    gw: &str,
    access: Access,
) -> Result<(), String> {
    let Some(gate) = gate else {
        return Err("Gateway identity is missing".into());
    };
    let Some(row) = row else {
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
