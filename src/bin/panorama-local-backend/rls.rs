//! Row-level security as Panorama's: a gateway session sees and writes only rows of its own team
//! (and its own gateway where the table has a gateway_id column); the anon key alone sees
//! nothing; the service role sees and writes everything.

use crate::app::{GatewayClaims, Principal};
use crate::store::{table_def, Row};
use serde_json::Value;

fn in_scope(g: &GatewayClaims, table: &str, row: &Row) -> bool {
    let s = |k: &str| row.get(k).and_then(Value::as_str);
    if s("team_id") != Some(g.team_id.as_str()) {
        return false;
    }
    if table == "team_gateways" {
        return s("id") == Some(g.gateway_id.as_str());
    }
    match table_def(table) {
        Some(def) if def.has("gateway_id") => s("gateway_id") == Some(g.gateway_id.as_str()),
        Some(_) => true,
        None => false,
    }
}

const GATEWAY_READ: &[&str] = &[
    "team_gateways",
    "gateway_jobs",
    "gateway_events",
    "subagents",
    "subagent_runs",
    "subagent_run_events",
    "team_resources",
];
const GATEWAY_UPDATE: &[&str] = &["gateway_jobs", "subagents", "subagent_runs"];
const GATEWAY_INSERT: &[&str] = &["gateway_events", "subagent_run_events"];

/// SELECT policy.
pub fn can_select(p: &Principal, table: &str, row: &Row) -> bool {
    match p {
        Principal::Service => true,
        Principal::Anon => false,
        Principal::Gateway(g) => GATEWAY_READ.contains(&table) && in_scope(g, table, row),
    }
}

/// UPDATE policy, USING part (which rows may be targeted).
pub fn can_update(p: &Principal, table: &str, row: &Row) -> bool {
    match p {
        Principal::Service => true,
        Principal::Anon => false,
        Principal::Gateway(g) => GATEWAY_UPDATE.contains(&table) && in_scope(g, table, row),
    }
}

/// WITH CHECK part for updates and inserts: may the row exist as written?
pub fn check_new(p: &Principal, table: &str, row: &Row, insert: bool) -> bool {
    match p {
        Principal::Service => true,
        Principal::Anon => false,
        Principal::Gateway(g) => {
            let allowed = if insert {
                GATEWAY_INSERT
            } else {
                GATEWAY_UPDATE
            };
            allowed.contains(&table) && in_scope(g, table, row)
        }
    }
}

/// DELETE policy: only the service role deletes.
pub fn can_delete(p: &Principal, _table: &str, _row: &Row) -> bool {
    p.is_service()
}
