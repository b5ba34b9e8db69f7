//! Team resources as the remote shell reads them: the `team_resources` row of a resource and
//! this gateway's `team_gateways` row (its `vm_id`, and the team's machine-control toggle read
//! at the moment of use), read in parallel so a shell job waits for one round trip, not two.
//! The checks on them are the shell handlers' (`jobs/shell/access.rs`); handlers see only
//! [`ResourceReader`].

use std::sync::Arc;

use serde_json::Value;

use super::session::Session;
use super::{rest, Error};

/// The rows a remote shell check reads, each with its own outcome: the caller decides which
/// failure to report first (machine control before the resource).
#[derive(Debug)]
pub struct RemoteShellRows {
    /// `id,team_id,resource_type,max_access_level,metadata` of the resource. Ok(None): no
    /// such row in the team, or no resource was asked for.
    pub resource: Result<Option<Value>, Error>,
    /// `vm_id,full_control_enabled` of this gateway. Err(None): the reading thread did not
    /// come back.
    pub gateway: Result<Option<Value>, Option<Error>>,
}

/// What the shell handlers may read from the backend, and whose team and gateway they act for.
pub trait ResourceReader: Send + Sync {
    fn team_id(&self) -> &str;
    fn gateway_id(&self) -> &str;
    /// This gateway's row and, when `resource_id` is given, the resource row, for the team of
    /// the session, read in parallel.
    fn remote_shell_rows(&self, resource_id: Option<&str>) -> RemoteShellRows;
}

impl ResourceReader for Session {
    fn team_id(&self) -> &str {
        &self.team_id
    }

    fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    fn remote_shell_rows(&self, resource_id: Option<&str>) -> RemoteShellRows {
        let tid = format!("eq.{}", self.team_id);
        let gid = format!("eq.{}", self.gateway_id);
        let gateway_row = || {
            rest::select(
                self,
                "team_gateways",
                &[
                    ("select", "vm_id,full_control_enabled"),
                    ("id", &gid),
                    ("team_id", &tid),
                ],
            )
            .map(first)
        };
        let Some(resource_id) = resource_id else {
            return RemoteShellRows {
                resource: Ok(None),
                gateway: gateway_row().map_err(Some),
            };
        };
        let rid = format!("eq.{resource_id}");
        let (resource, gateway) = std::thread::scope(|sc| {
            let g = sc.spawn(gateway_row);
            let r = rest::select(
                self,
                "team_resources",
                &[
                    (
                        "select",
                        "id,team_id,resource_type,max_access_level,metadata",
                    ),
                    ("id", &rid),
                    ("team_id", &tid),
                ],
            )
            .map(first);
            (r, g.join())
        });
        let gateway = match gateway {
            Ok(read) => read.map_err(Some),
            Err(_) => Err(None),
        };
        RemoteShellRows { resource, gateway }
    }
}

fn first(rows: Vec<Value>) -> Option<Value> {
    rows.into_iter().next()
}

/// The session as a resource reader (for the runtime handing it to the handlers).
pub fn reader(session: &Arc<Session>) -> Arc<dyn ResourceReader> {
    session.clone()
}
