//! Team resources as the remote shell reads them: the `team_resources` row of a resource and
//! this gateway's `team_gateways` row (its `vm_id`), read in parallel. The checks on them are
//! the shell handlers' (`jobs/shell/access.rs`); handlers see only [`ResourceReader`].

use std::sync::Arc;

use serde_json::Value;

use super::session::Session;
use super::{rest, Error};

/// The two rows a remote shell check needs (None: no such row).
#[derive(Debug, Clone, Default)]
pub struct RemoteShellRows {
    /// `id,team_id,resource_type,max_access_level,metadata` of the resource.
    pub resource: Option<Value>,
    /// `vm_id` of this gateway.
    pub gateway: Option<Value>,
}

/// Which read failed (the resource's is reported first).
#[derive(Debug)]
pub enum RowsError {
    Resource(Error),
    /// None: the reading thread did not come back.
    Gateway(Option<Error>),
}

/// What the shell handlers may read from the backend, and whose team and gateway they act for.
pub trait ResourceReader: Send + Sync {
    fn team_id(&self) -> &str;
    fn gateway_id(&self) -> &str;
    /// The resource row and this gateway's row, for the team of the session.
    fn remote_shell_rows(&self, resource_id: &str) -> Result<RemoteShellRows, RowsError>;
}

impl ResourceReader for Session {
    fn team_id(&self) -> &str {
        &self.team_id
    }

    fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    fn remote_shell_rows(&self, resource_id: &str) -> Result<RemoteShellRows, RowsError> {
        let rid = format!("eq.{resource_id}");
        let tid = format!("eq.{}", self.team_id);
        let gid = format!("eq.{}", self.gateway_id);
        let (res, gate) = std::thread::scope(|sc| {
            let g = sc.spawn(|| {
                rest::select(
                    self,
                    "team_gateways",
                    &[("select", "vm_id"), ("id", &gid), ("team_id", &tid)],
                )
            });
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
            );
            (r, g.join())
        });
        let res = res.map_err(RowsError::Resource)?;
        let gate = match gate {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return Err(RowsError::Gateway(Some(e))),
            Err(_) => return Err(RowsError::Gateway(None)),
        };
        Ok(RemoteShellRows {
            resource: res.into_iter().next(),
            gateway: gate.into_iter().next(),
        })
    }
}

/// The session as a resource reader (for the runtime handing it to the handlers).
pub fn reader(session: &Arc<Session>) -> Arc<dyn ResourceReader> {
    session.clone()
}
