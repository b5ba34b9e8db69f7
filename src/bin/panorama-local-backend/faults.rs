//! Fault injection (`POST /admin/v1/faults`) and counters (`GET /admin/v1/stats`).

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PathClass {
    Rest,
    Functions,
    Auth,
    Realtime,
    Admin,
    Other,
}

impl PathClass {
    pub fn of(path: &str) -> PathClass {
        if path.starts_with("/rest/v1/") || path == "/rest/v1" {
            PathClass::Rest
        } else if path.starts_with("/functions/v1/") {
            PathClass::Functions
        } else if path.starts_with("/auth/v1/") {
            PathClass::Auth
        } else if path.starts_with("/realtime/v1/") {
            PathClass::Realtime
        } else if path.starts_with("/admin/v1/") {
            PathClass::Admin
        } else {
            PathClass::Other
        }
    }
    fn name(self) -> &'static str {
        match self {
            PathClass::Rest => "rest",
            PathClass::Functions => "functions",
            PathClass::Auth => "auth",
            PathClass::Realtime => "realtime",
            PathClass::Admin => "admin",
            PathClass::Other => "other",
        }
    }
}

/// Which path classes a rule applies to.
#[derive(Clone, Debug)]
struct ClassSet(Vec<PathClass>);

impl ClassSet {
    fn parse(v: Option<&Value>) -> Result<ClassSet, String> {
        let words: Vec<String> = match v {
            None | Some(Value::Null) => vec!["all".into()],
            Some(Value::String(s)) => s
                .split(['|', ','])
                .map(|w| w.trim().to_string())
                .filter(|w| !w.is_empty())
                .collect(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().unwrap_or("").to_string())
                .collect(),
            Some(_) => {
                return Err("\"paths\" must be a string like \"rest|functions\" or an array".into())
            }
        };
        let mut out = Vec::new();
        for w in words {
            match w.as_str() {
                "all" => out.extend([PathClass::Rest, PathClass::Functions, PathClass::Auth]),
                "rest" => out.push(PathClass::Rest),
                "functions" => out.push(PathClass::Functions),
                "auth" => out.push(PathClass::Auth),
                "realtime" => out.push(PathClass::Realtime),
                other => {
                    return Err(format!(
                    "unknown path class {other:?} in \"paths\"; use rest, functions, auth, realtime or all"
                ))
                }
            }
        }
        Ok(ClassSet(out))
    }
    fn has(&self, c: PathClass) -> bool {
        self.0.contains(&c)
    }
}

/// Which requests a rule applies to: path classes, and optionally one HTTP method and a path
/// prefix (so a test can fail exactly the completion `PATCH /rest/v1/gateway_jobs`, not the
/// next REST call of any kind).
#[derive(Clone, Debug)]
struct Target {
    classes: ClassSet,
    method: Option<String>,
    path_prefix: Option<String>,
}

impl Target {
    fn parse(rule: &Value, what: &str) -> Result<Target, String> {
        let text = |k: &str| -> Result<Option<String>, String> {
            match rule.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(_) => Err(format!("{what}.{k} must be a non-empty string")),
            }
        };
        let method = text("method")?.map(|m| m.to_ascii_uppercase());
        let path_prefix = text("path_prefix")?;
        if let Some(p) = &path_prefix {
            if !p.starts_with('/') {
                return Err(format!(
                    "{what}.path_prefix must start with '/', like \"/rest/v1/gateway_jobs\""
                ));
            }
        }
        Ok(Target {
            classes: ClassSet::parse(rule.get("paths"))?,
            method,
            path_prefix,
        })
    }
    /// The rule's target as the stats show it (`method`/`path_prefix` only when set).
    fn describe(&self) -> Value {
        let mut v = json!({"paths": self.classes.0.iter().map(|c| c.name()).collect::<Vec<_>>()});
        if let Some(m) = &self.method {
            v["method"] = json!(m);
        }
        if let Some(p) = &self.path_prefix {
            v["path_prefix"] = json!(p);
        }
        v
    }
    fn hits(&self, c: PathClass, method: &str, path: &str) -> bool {
        self.classes.has(c)
            && self.method.as_deref().is_none_or(|m| m == method)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }
}

#[derive(Clone, Debug)]
struct FailRule {
    remaining: u64,
    status: u16,
    target: Target,
}

#[derive(Clone, Debug)]
struct DelayRule {
    remaining: u64,
    ms: u64,
    target: Target,
}

#[derive(Default)]
struct FaultState {
    fail: Vec<FailRule>,
    delay: Vec<DelayRule>,
    /// Close each connection right after this many more successful joins.
    close_after_join: u64,
    /// Refuse this many more joins with an error reply.
    fail_joins: u64,
}

#[derive(Default)]
pub struct Faults {
    s: Mutex<FaultState>,
}

/// What to do with one request.
pub struct Verdict {
    pub delay_ms: u64,
    pub fail_status: Option<u16>,
}

/// A parsed fault request, applied by the admin handler.
#[derive(Default, Debug)]
pub struct FaultRequest {
    pub drop_realtime: bool,
    pub expire_access_tokens: bool,
    pub revoke_refresh_tokens: bool,
    pub mute_realtime_ms: Option<u64>,
    pub clear: bool,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.s.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Consumes the matching rules for one request of class `c` (`method` and `path` as sent).
    pub fn take(&self, c: PathClass, method: &str, path: &str) -> Verdict {
        let mut s = self.lock();
        let mut v = Verdict {
            delay_ms: 0,
            fail_status: None,
        };
        if let Some(r) = s
            .delay
            .iter_mut()
            .find(|r| r.remaining > 0 && r.target.hits(c, method, path))
        {
            r.remaining -= 1;
            v.delay_ms = r.ms;
        }
        if let Some(r) = s
            .fail
            .iter_mut()
            .find(|r| r.remaining > 0 && r.target.hits(c, method, path))
        {
            r.remaining -= 1;
            v.fail_status = Some(r.status);
        }
        s.fail.retain(|r| r.remaining > 0);
        s.delay.retain(|r| r.remaining > 0);
        v
    }

    /// True when this successful join must be followed by closing the connection.
    /// True when this join must be refused (fault `fail_next_joins`).
    pub fn take_fail_join(&self) -> bool {
        let mut s = self.lock();
        if s.fail_joins > 0 {
            s.fail_joins -= 1;
            true
        } else {
            false
        }
    }

    pub fn take_close_after_join(&self) -> bool {
        let mut s = self.lock();
        if s.close_after_join > 0 {
            s.close_after_join -= 1;
            true
        } else {
            false
        }
    }

    /// Parses the body of `POST /admin/v1/faults`; the request-scoped rules are stored here,
    /// the immediate actions are returned for the caller to apply.
    pub fn apply_body(&self, body: &Value) -> Result<FaultRequest, String> {
        let m = body
            .as_object()
            .ok_or("the body must be a JSON object such as {\"drop_realtime\": true}")?;
        let known = [
            "drop_realtime",
            "fail_next",
            "delay_next",
            "expire_access_tokens",
            "revoke_refresh_tokens",
            "mute_realtime_ms",
            "close_realtime_after_join",
            "fail_next_joins",
            "clear",
        ];
        for k in m.keys() {
            if !known.contains(&k.as_str()) {
                return Err(format!(
                    "unknown fault {k:?}; known faults: {}",
                    known.join(", ")
                ));
            }
        }
        let flag = |k: &str| -> Result<bool, String> {
            match m.get(k) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(format!("{k:?} must be true or false")),
            }
        };
        let mut req = FaultRequest {
            drop_realtime: flag("drop_realtime")?,
            expire_access_tokens: flag("expire_access_tokens")?,
            revoke_refresh_tokens: flag("revoke_refresh_tokens")?,
            clear: flag("clear")?,
            mute_realtime_ms: None,
        };
        let num = |v: &Value, what: &str| -> Result<u64, String> {
            v.as_u64()
                .ok_or_else(|| format!("{what} must be a non-negative integer"))
        };
        let mut new_fail = None;
        let mut new_delay = None;
        if let Some(f) = m.get("fail_next") {
            let count = num(f.get("count").unwrap_or(&json!(1)), "fail_next.count")?;
            let status = num(f.get("status").unwrap_or(&json!(503)), "fail_next.status")?;
            if !(400..=599).contains(&status) {
                return Err("fail_next.status must be an HTTP error status (400-599)".into());
            }
            new_fail = Some(FailRule {
                remaining: count,
                status: status as u16,
                target: Target::parse(f, "fail_next")?,
            });
        }
        if let Some(d) = m.get("delay_next") {
            let count = num(d.get("count").unwrap_or(&json!(1)), "delay_next.count")?;
            let ms = num(d.get("ms").unwrap_or(&json!(1000)), "delay_next.ms")?;
            if ms > 600_000 {
                return Err("delay_next.ms must be at most 600000".into());
            }
            new_delay = Some(DelayRule {
                remaining: count,
                ms,
                target: Target::parse(d, "delay_next")?,
            });
        }
        if let Some(v) = m.get("mute_realtime_ms") {
            req.mute_realtime_ms = Some(num(v, "mute_realtime_ms")?);
        }
        let close_after = match m.get("close_realtime_after_join") {
            Some(v) => Some(num(v, "close_realtime_after_join")?),
            None => None,
        };
        let fail_joins = match m.get("fail_next_joins") {
            Some(v) => Some(num(v, "fail_next_joins")?),
            None => None,
        };
        let mut s = self.lock();
        if req.clear {
            *s = FaultState::default();
        }
        if let Some(f) = new_fail {
            s.fail.push(f);
        }
        if let Some(d) = new_delay {
            s.delay.push(d);
        }
        if let Some(n) = close_after {
            s.close_after_join = n;
        }
        if let Some(n) = fail_joins {
            s.fail_joins = n;
        }
        Ok(req)
    }

    pub fn pending_json(&self) -> Value {
        let s = self.lock();
        json!({
            "fail_next": s.fail.iter().map(|r| {
                let mut v = r.target.describe();
                v["remaining"] = json!(r.remaining);
                v["status"] = json!(r.status);
                v
            }).collect::<Vec<_>>(),
            "delay_next": s.delay.iter().map(|r| {
                let mut v = r.target.describe();
                v["remaining"] = json!(r.remaining);
                v["ms"] = json!(r.ms);
                v
            }).collect::<Vec<_>>(),
            "close_realtime_after_join": s.close_after_join,
            "fail_next_joins": s.fail_joins,
        })
    }
}

#[derive(Default)]
pub struct Stats {
    pub http_connections: AtomicU64,
    pub req_rest: AtomicU64,
    pub req_functions: AtomicU64,
    pub req_auth: AtomicU64,
    pub req_admin: AtomicU64,
    pub req_realtime: AtomicU64,
    pub req_other: AtomicU64,
    pub ws_total: AtomicU64,
    pub ws_open: AtomicU64,
    pub joins: AtomicU64,
    pub join_errors: AtomicU64,
    pub heartbeats: AtomicU64,
    pub events_delivered: AtomicU64,
    pub faults_injected: AtomicU64,
    pub refreshes: AtomicU64,
}

impl Stats {
    pub fn http_connection_opened(&self) {
        self.http_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_request(&self, c: PathClass) {
        let ctr = match c {
            PathClass::Rest => &self.req_rest,
            PathClass::Functions => &self.req_functions,
            PathClass::Auth => &self.req_auth,
            PathClass::Admin => &self.req_admin,
            PathClass::Realtime => &self.req_realtime,
            PathClass::Other => &self.req_other,
        };
        ctr.fetch_add(1, Ordering::Relaxed);
    }

    pub fn to_json(&self, channels: usize) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "connections": {
                "realtime_open": g(&self.ws_open),
                "realtime_total": g(&self.ws_total),
                "http_total": g(&self.http_connections),
            },
            "channels": channels,
            "joins": g(&self.joins),
            "join_errors": g(&self.join_errors),
            "requests": {
                "rest": g(&self.req_rest),
                "functions": g(&self.req_functions),
                "auth": g(&self.req_auth),
                "admin": g(&self.req_admin),
                "realtime": g(&self.req_realtime),
                "other": g(&self.req_other),
            },
            "heartbeats_received": g(&self.heartbeats),
            "events_delivered": g(&self.events_delivered),
            "faults_injected": g(&self.faults_injected),
            "token_refreshes": g(&self.refreshes),
        })
    }
}
