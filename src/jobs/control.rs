//! Machine control at the moment of use (PROTOCOL.md §8; subagents-shell.md §7.2 step 2 and
//! §8.4): the one check every job that acts on the machine makes right before it acts.
//!
//! The layers are read when the check runs, never taken from a cache that could say "yes"
//! after a layer was switched off: the team toggle (`team_gateways.full_control_enabled`)
//! from the backend, the install toggle from gateway.json, the heartbeat's freshness from the
//! runtime. A read that fails denies. The first layer that says no names the denial, in the
//! reference's order.

use serde_json::Value;

use super::{ControlState, JobContext};

/// Why machine control is denied, and the layers as read (so the caller can close what was
/// opened under them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub message: &'static str,
    pub state: ControlState,
}

/// The team row could not be read (or no backend): machine control is denied.
pub const UNAVAILABLE: &str = "Gateway control state unavailable";
pub const HEARTBEAT_STALE: &str = "Gateway is offline or heartbeat is stale";
pub const TEAM_DISABLED: &str = "Gateway machine control is disabled in Team Integrations.";
pub const INSTALL_DISABLED: &str = "Gateway host machine control is disabled. Run \"panorama-gateway full-control enable\" on the host.";

/// Every layer read now: the team toggle from this gateway's `team_gateways` row as the caller
/// has just read it from the backend (`team`: its `full_control_enabled`; None when the row
/// could not be read or is missing, which denies), the install toggle from gateway.json. For
/// `shell_exec` and `shell_session` open/write/resize, right before they start anything; the
/// shell reads that row in parallel with its resource row, one round trip instead of two.
/// (Elevated subagent runs read their row themselves: [`elevated_denial`].)
pub fn machine_control_with_team(
    ctx: &JobContext,
    team: Option<bool>,
) -> Result<ControlState, Denied> {
    let mut state = ctx.control();
    state.team_known = team.is_some();
    state.team_enabled = team == Some(true);
    judge(ctx.session.is_some(), state)
}

/// The same check with the team toggle as last read after a heartbeat (no request): for
/// actions that only look (`shell_session` read/status). Turning the team toggle off closes
/// the sessions within one heartbeat period anyway.
pub fn machine_control_last_read(ctx: &JobContext) -> Result<ControlState, Denied> {
    judge(ctx.session.is_some(), ctx.control())
}

/// The first layer that says no, in the reference's order: no control state, stale
/// heartbeat, team toggle, install toggle.
pub fn denial(has_backend: bool, c: ControlState) -> Option<&'static str> {
    if !has_backend || !c.team_known {
        Some(UNAVAILABLE)
    } else if !c.heartbeat_fresh {
        Some(HEARTBEAT_STALE)
    } else if !c.team_enabled {
        Some(TEAM_DISABLED)
    } else if !c.install_enabled {
        Some(INSTALL_DISABLED)
    } else {
        None
    }
}

/// The machine-control layers of an elevated subagent run (§8.4), for a handler that has just
/// read this gateway's `team_gateways` row itself (it needs the row's heartbeat and services
/// too): the team toggle from that row, the install toggle from `c` (gateway.json, read now).
/// The handler checks the heartbeat and the provider's elevated flags in the reference's order.
pub fn elevated_denial(team_row: &Value, c: ControlState) -> Option<&'static str> {
    if team_row.get("full_control_enabled") != Some(&Value::Bool(true)) {
        Some(TEAM_DISABLED)
    } else if !c.install_enabled {
        Some(INSTALL_DISABLED)
    } else {
        None
    }
}

fn judge(has_backend: bool, state: ControlState) -> Result<ControlState, Denied> {
    match denial(has_backend, state) {
        None => Ok(state),
        Some(message) => Err(Denied { message, state }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_closed_layer_is_named_and_an_unread_team_toggle_denies() {
        let all = ControlState {
            install_enabled: true,
            team_enabled: true,
            team_known: true,
            heartbeat_fresh: true,
        };
        assert_eq!(denial(true, all), None);
        assert_eq!(judge(true, all), Ok(all));
        assert_eq!(denial(false, all), Some(UNAVAILABLE));
        // A failed read is never a "yes", whatever was read before.
        let unread = ControlState {
            team_known: false,
            ..all
        };
        assert_eq!(denial(true, unread), Some(UNAVAILABLE));
        assert_eq!(
            judge(true, unread),
            Err(Denied {
                message: UNAVAILABLE,
                state: unread
            })
        );
        let stale = ControlState {
            heartbeat_fresh: false,
            ..all
        };
        assert_eq!(denial(true, stale), Some(HEARTBEAT_STALE));
        let no_team = ControlState {
            team_enabled: false,
            install_enabled: false,
            ..all
        };
        assert_eq!(denial(true, no_team), Some(TEAM_DISABLED));
        let no_install = ControlState {
            install_enabled: false,
            ..all
        };
        assert_eq!(denial(true, no_install), Some(INSTALL_DISABLED));
        assert!(INSTALL_DISABLED.contains("panorama-gateway full-control enable"));
    }

    #[test]
    fn an_elevated_run_needs_the_team_row_and_the_install_toggle() {
        let on = ControlState {
            install_enabled: true,
            ..ControlState::default()
        };
        let row = serde_json::json!({"full_control_enabled": true});
        assert_eq!(elevated_denial(&row, on), None);
        let off = serde_json::json!({"full_control_enabled": false});
        assert_eq!(elevated_denial(&off, on), Some(TEAM_DISABLED));
        // Only the JSON value true counts.
        let text = serde_json::json!({"full_control_enabled": "true"});
        assert_eq!(elevated_denial(&text, on), Some(TEAM_DISABLED));
        assert_eq!(
            elevated_denial(&row, ControlState::default()),
            Some(INSTALL_DISABLED)
        );
    }
}
