//! gateway.json as the other modules' store: the backend session's token store and the
//! providers' health sink. `pair` and the daemon's runtime both use these (one copy).

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::session::TokenStore;
use crate::config::state::{self, GatewayState};
use crate::providers::health::Health;
use crate::providers::HealthSink;

/// Persists rotated tokens into gateway.json (read-modify-write, unknown keys kept), for the
/// gateway `gateway_id` only: a `pair` since the session started made the file another
/// gateway's, and its tokens are never overwritten with ours.
pub struct FileTokenStore {
    config_path: PathBuf,
    gateway_id: String,
}

impl FileTokenStore {
    pub fn new(config_path: PathBuf, gateway_id: &str) -> FileTokenStore {
        FileTokenStore {
            config_path,
            gateway_id: gateway_id.to_string(),
        }
    }
}

impl TokenStore for FileTokenStore {
    fn save(&self, access_token: &str, refresh_token: &str) -> Result<(), String> {
        let (a, r) = (access_token.to_string(), refresh_token.to_string());
        let me = self.gateway_id.clone();
        let mut foreign = false;
        let written = state::update(&self.config_path, |s: &mut GatewayState| {
            if s.gateway_id.as_deref() == Some(me.as_str()) {
                s.access_token = Some(a);
                s.refresh_token = Some(r);
            } else {
                foreign = true;
            }
        });
        written.map_err(|e| e.to_string())?;
        if foreign {
            return Err("gateway.json now holds another pairing (re-paired while running); restart the gateway to use it".into());
        }
        Ok(())
    }

    fn load(&self) -> Option<(String, String)> {
        let s = state::load(&self.config_path).ok()??;
        // Tokens of another pairing (a new gateway id) are no use to this session.
        if s.gateway_id.as_deref() != Some(self.gateway_id.as_str()) {
            return None;
        }
        Some((s.access_token?, s.refresh_token?))
    }
}

/// Persists provider health changes into gateway.json (`providerHealth`).
pub fn health_sink(config_path: PathBuf) -> HealthSink {
    Arc::new(move |id: &str, h: &Health| {
        let (id, v) = (id.to_string(), h.to_json());
        let r = state::update(&config_path, move |s: &mut GatewayState| {
            s.provider_health
                .get_or_insert_with(Default::default)
                .insert(id, v);
        });
        if let Err(e) = r {
            log::warn!(target: "providers", "cannot save provider health to gateway.json: {e}");
        }
    })
}
