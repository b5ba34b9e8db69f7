//! gateway.json: load, atomic owner-only save, read-modify-write under a lock.
//! Owner: Foundation (issue 2). The session (issue 4) rewrites tokens; providers (issue 5)
//! write `providerHealth`; `full-control` writes `full_control_enabled`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The keys of gateway.json, exactly as PROTOCOL.md §1 names them. Unknown keys (for example
/// `vmGuest`) are kept in `extra` and written back unchanged.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GatewayState {
    #[serde(
        rename = "supabaseUrl",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub supabase_url: Option<String>,
    #[serde(
        rename = "supabaseAnonKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub supabase_anon_key: Option<String>,
    #[serde(
        rename = "accessToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub access_token: Option<String>,
    #[serde(
        rename = "refreshToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub refresh_token: Option<String>,
    #[serde(rename = "gatewayId", default, skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    #[serde(rename = "teamId", default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default)]
    pub full_control_enabled: bool,
    #[serde(rename = "deviceName", default)]
    pub device_name: Option<String>,
    #[serde(
        rename = "providerHealth",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_health: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
