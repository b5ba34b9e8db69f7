//! Shared state of the emulator and token validation (who is calling).

use crate::faults::{Faults, Stats};
use crate::jwt::{self, JwtError};
use crate::realtime::Hub;
use crate::store::{Db, Row};
use crate::util;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

pub struct Config {
    pub access_ttl_secs: u64,
    pub pairing_ttl_secs: u64,
    pub refresh_reuse_secs: u64,
    pub data_path: Option<PathBuf>,
}

pub struct App {
    pub cfg: Config,
    pub secret: Vec<u8>,
    pub anon_key: String,
    pub service_key: String,
    db: Mutex<Db>,
    pub hub: Hub,
    pub faults: Faults,
    pub stats: Stats,
    /// Serial stamped into every access token (`seq` claim); monotonic across restarts.
    token_seq: AtomicU64,
    /// Access tokens with `seq` below this are refused as expired (fault injection).
    revoked_before_seq: AtomicU64,
    pub dirty: AtomicBool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GatewayClaims {
    pub user_id: String,
    pub gateway_id: String,
    pub team_id: String,
    pub session_id: String,
    pub exp: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Principal {
    Anon,
    Service,
    Gateway(GatewayClaims),
}

impl Principal {
    pub fn is_service(&self) -> bool {
        matches!(self, Principal::Service)
    }
}

/// One change to a row, for realtime delivery.
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: &'static str, // INSERT | UPDATE | DELETE
    pub table: &'static str,
    pub record: Option<Row>,
    pub old: Option<Row>,
    pub commit_timestamp: String,
}

impl App {
    pub fn new(cfg: Config, secret: Vec<u8>, db: Db) -> App {
        let anon_key = jwt::sign(
            &secret,
            &json!({"iss": "supabase-demo", "role": "anon", "iat": 1_700_000_000u64, "exp": 4_102_444_800u64}),
        );
        let service_key = jwt::sign(
            &secret,
            &json!({"iss": "supabase-demo", "role": "service_role", "iat": 1_700_000_000u64, "exp": 4_102_444_800u64}),
        );
        App {
            cfg,
            secret,
            anon_key,
            service_key,
            db: Mutex::new(db),
            hub: Hub::default(),
            faults: Faults::default(),
            stats: Stats::default(),
            token_seq: AtomicU64::new(util::now_ms() * 1000),
            revoked_before_seq: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
        }
    }

    /// The store lock. A panic while holding it must not take the whole emulator down.
    pub fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records committed changes: persists later and fans out to realtime subscribers.
    /// Call while still holding the store lock so that subscribers see commit order.
    pub fn commit(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        self.dirty.store(true, Ordering::SeqCst);
        self.hub.publish(self, &changes);
    }

    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Refuses every access token issued so far (fault `expire_access_tokens`).
    pub fn expire_access_tokens(&self) {
        let next = self.token_seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.revoked_before_seq.store(next, Ordering::SeqCst);
    }

    pub fn issue_access_token(
        &self,
        user_id: &str,
        gateway_id: &str,
        team_id: &str,
        session_id: &str,
    ) -> (String, u64) {
        let now = util::now_secs();
        let exp = now + self.cfg.access_ttl_secs;
        let seq = self.token_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let claims = json!({
            "iss": "panorama-local-backend/auth/v1",
            "sub": user_id,
            "aud": "authenticated",
            "role": "authenticated",
            "iat": now,
            "exp": exp,
            "session_id": session_id,
            "aal": "aal1",
            "is_anonymous": false,
            "gateway_id": gateway_id,
            "team_id": team_id,
            "app_metadata": {"provider": "gateway", "gateway_id": gateway_id, "team_id": team_id},
            "seq": seq
        });
        (jwt::sign(&self.secret, &claims), exp)
    }

    /// Validates a bearer token and says who it belongs to.
    pub fn principal(&self, token: &str) -> Result<Principal, JwtError> {
        let claims = jwt::verify(&self.secret, token)?;
        let now = util::now_secs();
        if let Some(exp) = claims.get("exp") {
            let exp = exp
                .as_f64()
                .ok_or(JwtError::Malformed("exp is not a number"))? as u64;
            if exp <= now {
                return Err(JwtError::Expired(now - exp));
            }
        }
        match claims.get("role").and_then(Value::as_str) {
            Some("anon") => Ok(Principal::Anon),
            Some("service_role") => Ok(Principal::Service),
            Some("authenticated") => {
                let seq = claims.get("seq").and_then(Value::as_u64).unwrap_or(0);
                if seq < self.revoked_before_seq.load(Ordering::SeqCst) {
                    return Err(JwtError::Revoked);
                }
                let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
                match (s("sub"), s("gateway_id"), s("team_id")) {
                    (Some(user_id), Some(gateway_id), Some(team_id)) => {
                        Ok(Principal::Gateway(GatewayClaims {
                            user_id,
                            gateway_id,
                            team_id,
                            session_id: s("session_id").unwrap_or_default(),
                            exp: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
                        }))
                    }
                    _ => Err(JwtError::Malformed(
                        "missing sub, gateway_id or team_id claim",
                    )),
                }
            }
            _ => Err(JwtError::Malformed("unknown role claim")),
        }
    }

    /// Checks the `apikey` (anon or service_role key signed with our secret).
    pub fn apikey_ok(&self, key: &str) -> bool {
        matches!(
            self.principal(key),
            Ok(Principal::Anon) | Ok(Principal::Service)
        )
    }
}

pub fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
