//! The data store: table definitions (columns, types, defaults, constraints), rows in memory,
//! the auth records (users, refresh tokens), and atomic persistence to a JSON file.

use crate::util;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub type Row = Map<String, Value>;

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Ty {
    Uuid,
    Text,
    Jsonb,
    Int4,
    Bool,
    Timestamptz,
}

impl Ty {
    pub fn pg_name(self) -> &'static str {
        match self {
            Ty::Uuid => "uuid",
            Ty::Text => "text",
            Ty::Jsonb => "jsonb",
            Ty::Int4 => "int4",
            Ty::Bool => "bool",
            Ty::Timestamptz => "timestamptz",
        }
    }
}

#[derive(Clone, Copy)]
pub enum Dflt {
    Null,
    NewUuid,
    Now,
    Int(i64),
    Bool(bool),
    Str(&'static str),
    EmptyObject,
}

pub struct Column {
    pub name: &'static str,
    pub ty: Ty,
    pub default: Dflt,
    pub not_null: bool,
}

pub struct TableDef {
    pub name: &'static str,
    pub pk: &'static str,
    pub columns: Vec<Column>,
    /// Allowed values per column (a CHECK constraint).
    pub checks: Vec<(&'static str, &'static [&'static str])>,
    /// Unique constraints (besides the primary key), with the constraint name.
    pub uniques: Vec<(&'static str, &'static [&'static str])>,
}

impl TableDef {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
    pub fn has(&self, name: &str) -> bool {
        self.column(name).is_some()
    }
}

fn col(name: &'static str, ty: Ty, default: Dflt, not_null: bool) -> Column {
    Column {
        name,
        ty,
        default,
        not_null,
    }
}

const JOB_STATUSES: &[&str] = &["queued", "running", "completed", "failed", "cancelled"];
const GATEWAY_STATUSES: &[&str] = &["pending", "ready", "offline", "error"];
const EVENT_LEVELS: &[&str] = &["info", "warn", "error"];
const RUN_EVENT_TYPES: &[&str] = &[
    "message",
    "system",
    "tool_call",
    "tool_result",
    "run_started",
    "run_progress",
    "cancellation_requested",
    "cancellation_acknowledged",
    "run_completed",
    "run_failed",
    "run_cancelled",
];

fn build_tables() -> Vec<TableDef> {
    let mut all = gateway_tables();
    all.extend(subagent_tables());
    all.extend(team_tables());
    all
}

/// The gateway's own tables: its row, its jobs, its events.
fn gateway_tables() -> Vec<TableDef> {
    use Dflt as D;
    use Ty::*;
    let id = || col("id", Uuid, D::NewUuid, true);
    let created = || col("created_at", Timestamptz, D::Now, true);
    let updated = || col("updated_at", Timestamptz, D::Now, true);
    vec![
        TableDef {
            name: "team_gateways",
            pk: "id",
            columns: vec![
                id(),
                col("team_id", Uuid, D::Null, true),
                col("status", Text, D::Str("pending"), true),
                col("capabilities", Jsonb, D::Null, false),
                col("device_name", Text, D::Null, false),
                col("full_control_enabled", Bool, D::Bool(false), true),
                col("last_seen_at", Timestamptz, D::Null, false),
                col("ready_at", Timestamptz, D::Null, false),
                col("vm_id", Uuid, D::Null, false),
                col("vm_provisioning_generation", Int4, D::Null, false),
                col("vm_restore_stage_id", Uuid, D::Null, false),
                created(),
                updated(),
            ],
            checks: vec![("status", GATEWAY_STATUSES)],
            uniques: vec![],
        },
        TableDef {
            name: "gateway_jobs",
            pk: "id",
            columns: vec![
                id(),
                col("team_id", Uuid, D::Null, true),
                col("gateway_id", Uuid, D::Null, false),
                col("status", Text, D::Str("queued"), true),
                col("job_type", Text, D::Null, true),
                col("payload", Jsonb, D::EmptyObject, true),
                col("result", Jsonb, D::Null, false),
                col("error", Text, D::Null, false),
                col("debug", Jsonb, D::Null, false),
                col("attempt", Int4, D::Int(1), true),
                col("idempotency_key", Text, D::Null, false),
                col("retry_of_job_id", Uuid, D::Null, false),
                col("requested_via", Text, D::Null, false),
                col("requested_by_user_id", Uuid, D::Null, false),
                col("requested_by_agent_id", Uuid, D::Null, false),
                col("started_at", Timestamptz, D::Null, false),
                col("completed_at", Timestamptz, D::Null, false),
                created(),
                updated(),
            ],
            checks: vec![("status", JOB_STATUSES)],
            uniques: vec![],
        },
        TableDef {
            name: "gateway_events",
            pk: "id",
            columns: vec![
                id(),
                col("gateway_id", Uuid, D::Null, true),
                col("team_id", Uuid, D::Null, true),
                col("provider", Text, D::Null, false),
                col("level", Text, D::Str("info"), true),
                col("code", Text, D::Null, false),
                col("message", Text, D::Null, true),
                col("details", Jsonb, D::EmptyObject, true),
                created(),
            ],
            checks: vec![("level", EVENT_LEVELS)],
            uniques: vec![],
        },
    ]
}

/// Delegated subagents, their runs and run events.
fn subagent_tables() -> Vec<TableDef> {
    use Dflt as D;
    use Ty::*;
    let id = || col("id", Uuid, D::NewUuid, true);
    let created = || col("created_at", Timestamptz, D::Now, true);
    let updated = || col("updated_at", Timestamptz, D::Now, true);
    vec![
        TableDef {
            name: "subagents",
            pk: "id",
            columns: vec![
                id(),
                col("team_id", Uuid, D::Null, true),
                col("gateway_id", Uuid, D::Null, false),
                col("owner_agent_id", Uuid, D::Null, false),
                col("subagent_type", Text, D::Null, true),
                col("status", Text, D::Str("idle"), true),
                col("config", Jsonb, D::EmptyObject, true),
                col("input", Jsonb, D::EmptyObject, true),
                col("metadata", Jsonb, D::EmptyObject, true),
                col("output", Jsonb, D::Null, false),
                col("error", Text, D::Null, false),
                col("started_at", Timestamptz, D::Null, false),
                col("completed_at", Timestamptz, D::Null, false),
                col("created_by", Uuid, D::Null, false),
                created(),
                updated(),
            ],
            checks: vec![],
            uniques: vec![],
        },
        TableDef {
            name: "subagent_runs",
            pk: "id",
            columns: vec![
                id(),
                col("subagent_id", Uuid, D::Null, true),
                col("team_id", Uuid, D::Null, true),
                col("gateway_id", Uuid, D::Null, false),
                col("run_sequence", Int4, D::Int(1), true),
                col("status", Text, D::Str("running"), true),
                col("prompt", Text, D::Null, false),
                col("metadata", Jsonb, D::EmptyObject, true),
                col("output", Jsonb, D::Null, false),
                col("error", Text, D::Null, false),
                col("started_at", Timestamptz, D::Null, false),
                col("completed_at", Timestamptz, D::Null, false),
                col("cancellation_requested_at", Timestamptz, D::Null, false),
                col("current_turn_ordinal", Int4, D::Null, false),
                col("prompted_by_agent_id", Uuid, D::Null, false),
                col("terminal_proof", Jsonb, D::Null, false),
                col("terminal_proof_at", Timestamptz, D::Null, false),
                col("waiting_reason", Text, D::Null, false),
                col("waiting_recovery_at", Timestamptz, D::Null, false),
                col("workflow_id", Uuid, D::Null, false),
                created(),
                updated(),
            ],
            checks: vec![(
                "status",
                &[
                    "pending_admission",
                    "waiting_budget",
                    "running",
                    "cancelling",
                    "completed",
                    "failed",
                    "cancelled",
                ],
            )],
            uniques: vec![],
        },
        TableDef {
            name: "subagent_run_events",
            pk: "id",
            columns: vec![
                id(),
                col("run_id", Uuid, D::Null, true),
                col("subagent_id", Uuid, D::Null, true),
                col("team_id", Uuid, D::Null, true),
                col("gateway_id", Uuid, D::Null, false),
                col("sequence", Int4, D::Null, true),
                col("event_type", Text, D::Null, true),
                col("payload", Jsonb, D::EmptyObject, true),
                created(),
            ],
            checks: vec![("event_type", RUN_EVENT_TYPES)],
            uniques: vec![(
                "subagent_run_events_run_id_sequence_key",
                &["run_id", "sequence"],
            )],
        },
    ]
}

/// Team resources and pairing codes.
fn team_tables() -> Vec<TableDef> {
    use Dflt as D;
    use Ty::*;
    let id = || col("id", Uuid, D::NewUuid, true);
    let created = || col("created_at", Timestamptz, D::Now, true);
    let updated = || col("updated_at", Timestamptz, D::Now, true);
    vec![
        TableDef {
            name: "team_resources",
            pk: "id",
            columns: vec![
                id(),
                col("team_id", Uuid, D::Null, true),
                col("resource_type", Text, D::Null, true),
                col("name", Text, D::Null, false),
                col("max_access_level", Text, D::Null, false),
                col("metadata", Jsonb, D::EmptyObject, true),
                created(),
                updated(),
            ],
            checks: vec![],
            uniques: vec![],
        },
        TableDef {
            name: "gateway_pairing_codes",
            pk: "code",
            columns: vec![
                col("code", Text, D::Null, true),
                col("team_id", Uuid, D::Null, true),
                col("expires_at", Timestamptz, D::Null, true),
                col("created_by", Uuid, D::Null, false),
                col("used_at", Timestamptz, D::Null, false),
                col("used_gateway_id", Uuid, D::Null, false),
                created(),
            ],
            checks: vec![],
            uniques: vec![],
        },
    ]
}

pub fn tables() -> &'static [TableDef] {
    static T: OnceLock<Vec<TableDef>> = OnceLock::new();
    T.get_or_init(build_tables)
}

pub fn table_def(name: &str) -> Option<&'static TableDef> {
    tables().iter().find(|t| t.name == name)
}

/// A PostgREST-shaped error.
#[derive(Debug, Clone)]
pub struct DbError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub details: Option<String>,
    pub hint: Option<String>,
}

impl DbError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> DbError {
        DbError {
            status,
            code: code.to_string(),
            message: message.into(),
            details: None,
            hint: None,
        }
    }
    pub fn details(mut self, d: impl Into<String>) -> DbError {
        self.details = Some(d.into());
        self
    }
    pub fn hint(mut self, h: impl Into<String>) -> DbError {
        self.hint = Some(h.into());
        self
    }
    pub fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message, "details": self.details, "hint": self.hint})
    }
}

/// Converts a JSON value to what the column stores, as Postgres would (or fails with 22P02).
pub fn coerce(table: &str, c: &Column, v: Value) -> Result<Value, DbError> {
    if v.is_null() {
        return Ok(v);
    }
    let bad = |v: &Value| {
        DbError::new(
            400,
            "22P02",
            format!(
                "invalid input syntax for type {} in column {}.{}: {}",
                c.ty.pg_name(),
                table,
                c.name,
                v
            ),
        )
    };
    match c.ty {
        Ty::Jsonb => Ok(v),
        Ty::Text | Ty::Timestamptz => match v {
            Value::String(_) => Ok(v),
            Value::Number(n) if c.ty == Ty::Text => Ok(Value::String(n.to_string())),
            Value::Bool(b) if c.ty == Ty::Text => Ok(Value::String(b.to_string())),
            other => Err(bad(&other)),
        },
        Ty::Uuid => match &v {
            Value::String(s) if util::is_uuid(s) => Ok(Value::String(s.to_ascii_lowercase())),
            other => Err(bad(other)),
        },
        Ty::Int4 => match &v {
            Value::Number(n) if n.is_i64() => Ok(v),
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.fract() == 0.0 => Ok(json!(f as i64)),
                _ => Err(bad(&v)),
            },
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(|i| json!(i))
                .map_err(|_| bad(&v)),
            other => Err(bad(other)),
        },
        Ty::Bool => match &v {
            Value::Bool(_) => Ok(v),
            Value::String(s) => match s.as_str() {
                "true" | "t" => Ok(Value::Bool(true)),
                "false" | "f" => Ok(Value::Bool(false)),
                _ => Err(bad(&v)),
            },
            other => Err(bad(other)),
        },
    }
}

pub fn unknown_column(table: &str, column: &str) -> DbError {
    DbError::new(
        400,
        "PGRST204",
        format!("Could not find the '{column}' column of '{table}' in the schema cache"),
    )
}

/// Builds a full row from an insert body: coerces, fills defaults, checks constraints.
pub fn new_row(def: &TableDef, input: &Row, now: &str) -> Result<Row, DbError> {
    for k in input.keys() {
        if !def.has(k) {
            return Err(unknown_column(def.name, k));
        }
    }
    let mut row = Row::new();
    for c in &def.columns {
        let v = match input.get(c.name) {
            Some(v) => coerce(def.name, c, v.clone())?,
            None => match c.default {
                Dflt::Null => Value::Null,
                Dflt::NewUuid => Value::String(util::uuid_v4()),
                Dflt::Now => Value::String(now.to_string()),
                Dflt::Int(i) => json!(i),
                Dflt::Bool(b) => Value::Bool(b),
                Dflt::Str(s) => Value::String(s.to_string()),
                Dflt::EmptyObject => json!({}),
            },
        };
        row.insert(c.name.to_string(), v);
    }
    check_row(def, &row)?;
    Ok(row)
}

/// NOT NULL and CHECK constraints.
pub fn check_row(def: &TableDef, row: &Row) -> Result<(), DbError> {
    for c in &def.columns {
        if c.not_null && row.get(c.name).map(Value::is_null).unwrap_or(true) {
            return Err(DbError::new(
                400,
                "23502",
                format!(
                    "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                    c.name, def.name
                ),
            ));
        }
    }
    for (colname, allowed) in &def.checks {
        if let Some(Value::String(s)) = row.get(*colname) {
            if !allowed.contains(&s.as_str()) {
                return Err(DbError::new(
                    400,
                    "23514",
                    format!(
                        "new row for relation \"{}\" violates check constraint \"{}_{}_check\"",
                        def.name, def.name, colname
                    ),
                )
                .details(format!("{colname} must be one of {}", allowed.join(", "))));
            }
        }
    }
    Ok(())
}

/// Primary key and unique constraints of `row` against `rows` (skipping index `skip`).
pub fn check_unique(
    def: &TableDef,
    rows: &[Row],
    row: &Row,
    skip: Option<usize>,
) -> Result<(), DbError> {
    let mut keys: Vec<(String, Vec<&str>)> = vec![(format!("{}_pkey", def.name), vec![def.pk])];
    for (name, cols) in &def.uniques {
        keys.push((name.to_string(), cols.to_vec()));
    }
    for (name, cols) in keys {
        let vals: Vec<&Value> = cols
            .iter()
            .map(|c| row.get(*c).unwrap_or(&Value::Null))
            .collect();
        if vals.iter().any(|v| v.is_null()) {
            continue;
        }
        for (i, other) in rows.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            if cols
                .iter()
                .zip(&vals)
                .all(|(c, v)| other.get(*c) == Some(*v))
            {
                let shown: Vec<String> = vals
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                return Err(DbError::new(
                    409,
                    "23505",
                    format!("duplicate key value violates unique constraint \"{name}\""),
                )
                .details(format!(
                    "Key ({})=({}) already exists.",
                    cols.join(", "),
                    shown.join(", ")
                )));
            }
        }
    }
    Ok(())
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RefreshToken {
    pub user_id: String,
    pub session_id: String,
    pub created_ms: u64,
    #[serde(default)]
    pub revoked: bool,
    /// When it was exchanged for a new one (rotation).
    #[serde(default)]
    pub used_ms: Option<u64>,
    /// The token it was rotated into.
    #[serde(default)]
    pub child: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct User {
    pub id: String,
    pub gateway_id: String,
    pub team_id: String,
    pub created_at: String,
}

impl User {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "aud": "authenticated",
            "role": "authenticated",
            "email": format!("gateway-{}@gateways.panorama.local", self.gateway_id),
            "phone": "",
            "app_metadata": {"provider": "gateway", "providers": ["gateway"],
                              "gateway_id": self.gateway_id, "team_id": self.team_id},
            "user_metadata": {},
            "identities": [],
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "is_anonymous": false
        })
    }
}

#[derive(Default)]
pub struct Db {
    pub tables: BTreeMap<String, Vec<Row>>,
    pub users: BTreeMap<String, User>,
    pub refresh: HashMap<String, RefreshToken>,
    /// Secret generated at first start when persisting without --jwt-secret.
    pub jwt_secret: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    #[serde(default)]
    jwt_secret: Option<String>,
    #[serde(default)]
    tables: BTreeMap<String, Vec<Row>>,
    #[serde(default)]
    users: BTreeMap<String, User>,
    #[serde(default)]
    refresh_tokens: HashMap<String, RefreshToken>,
}

impl Db {
    pub fn new() -> Db {
        let mut db = Db::default();
        for t in tables() {
            db.tables.insert(t.name.to_string(), Vec::new());
        }
        db
    }

    pub fn rows(&self, table: &str) -> &[Row] {
        self.tables.get(table).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn rows_mut(&mut self, table: &str) -> &mut Vec<Row> {
        self.tables.entry(table.to_string()).or_default()
    }

    pub fn load(path: &Path) -> Result<Db, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read data file {}: {e}", path.display()))?;
        let snap: Snapshot = serde_json::from_str(&text).map_err(|e| {
            format!(
                "data file {} is not a valid snapshot ({e}); move it away or pass another --data path",
                path.display()
            )
        })?;
        let mut db = Db::new();
        for (name, rows) in snap.tables {
            if table_def(&name).is_some() {
                db.tables.insert(name, rows);
            } else {
                log::warn!(target: "store", "ignoring unknown table in data file table={name}");
            }
        }
        db.users = snap.users;
        db.refresh = snap.refresh_tokens;
        db.jwt_secret = snap.jwt_secret;
        Ok(db)
    }

    pub fn snapshot_json(&self) -> Vec<u8> {
        let snap = Snapshot {
            version: 1,
            jwt_secret: self.jwt_secret.clone(),
            tables: self.tables.clone(),
            users: self.users.clone(),
            refresh_tokens: self.refresh.clone(),
        };
        serde_json::to_vec(&snap).unwrap_or_default()
    }
}

/// Writes bytes to `path` atomically (temp file in the same directory, fsync, rename), mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp: PathBuf = match dir {
        Some(d) => d.join(format!(
            ".{}.tmp{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("data"),
            std::process::id()
        )),
        None => PathBuf::from(format!(".data.tmp{}", std::process::id())),
    };
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(d) = dir {
        if let Ok(f) = std::fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
    Ok(())
}
