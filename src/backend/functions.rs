//! Edge functions (`{url}/functions/v1/<name>`): the pairing exchange (anon bearer) and the
//! session-authenticated calls (gateway-heartbeat).

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::session::Session;
use super::{send, Error, HttpRequest, MAX_SMALL_BODY};
use crate::config::BackendConfig;

/// Heartbeat request timeout (PROTOCOL.md §8).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(20);

/// `POST /functions/v1/<name>` with the session bearer; a 2xx JSON object comes back.
pub fn invoke(s: &Session, name: &str, body: &Value, timeout: Duration) -> Result<Value, Error> {
    let resp = s.request(
        "POST",
        &format!("/functions/v1/{name}"),
        &[("Content-Type", "application/json")],
        Some(&body.to_string()),
        timeout,
        MAX_SMALL_BODY,
    )?;
    if !resp.is_success() {
        return Err(Error::Status {
            status: resp.status,
            body: crate::util::truncate_chars(&resp.text(), 2000, "..."),
        });
    }
    match serde_json::from_slice::<Value>(&resp.body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Error::Decode(format!(
            "{name} returned JSON that is not an object"
        ))),
        Err(_) => Err(Error::Decode(format!(
            "{name} returned a reply that is not JSON"
        ))),
    }
}

/// What a successful pairing gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Pairing {
    pub gateway_id: String,
    pub team_id: String,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: String,
}

const PAIR_KEYS: [&str; 7] = [
    "success",
    "gateway_id",
    "team_id",
    "access_token",
    "refresh_token",
    "expires_at",
    "token_type",
];

/// `POST /functions/v1/exchange-gateway-pairing-code` with the anon key as bearer. The error
/// string is ready to show to the user.
pub fn exchange_pairing_code(
    agent: &ureq::Agent,
    cfg: &BackendConfig,
    code: &str,
    device_name: &str,
    timeout: Duration,
) -> Result<Pairing, String> {
    let body = json!({ "code": code.trim(), "device_name": device_name }).to_string();
    let resp = send(
        agent,
        HttpRequest {
            method: "POST",
            url: format!(
                "{}/functions/v1/exchange-gateway-pairing-code",
                cfg.url.trim_end_matches('/')
            ),
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("apikey", cfg.anon_key.clone()),
                ("Authorization", format!("Bearer {}", cfg.anon_key)),
            ],
            body: Some(body),
            timeout,
            max_body: MAX_SMALL_BODY,
        },
    );
    let resp = match resp {
        Ok(r) => r,
        // Larger than 1 MiB counts as unparseable (backend.md §2.3): a 2xx is off-contract,
        // anything else reports its status.
        Err(Error::TooLarge { status, .. }) => {
            return parse_pairing_reply(status, b"");
        }
        Err(e) => {
            return Err(format!(
                "Could not reach the Panorama backend at {}: {e}. Check the network and the backend URL, then run pair again.",
                cfg.url
            ))
        }
    };
    parse_pairing_reply(resp.status, &resp.body)
}

/// Applies the pairing contract: strict success shape, lenient failure shape.
pub fn parse_pairing_reply(status: u16, body: &[u8]) -> Result<Pairing, String> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let ok = (200..300).contains(&status);
    if let Some(Value::Object(o)) = &parsed {
        if ok {
            if let Some(p) = strict_success(o) {
                return Ok(p);
            }
        }
        if o.get("success") != Some(&Value::Bool(true)) {
            if let Some(e) = o.get("error").and_then(Value::as_str) {
                if !e.trim().is_empty() {
                    return Err(format!("Pairing failed: {}", e.trim()));
                }
            }
        }
    }
    if ok {
        Err("Pairing response did not match the expected contract".into())
    } else {
        Err(format!("Pairing failed with status {status}"))
    }
}

fn strict_success(o: &Map<String, Value>) -> Option<Pairing> {
    if o.len() != PAIR_KEYS.len() || !PAIR_KEYS.iter().all(|k| o.contains_key(*k)) {
        return None;
    }
    if o.get("success") != Some(&Value::Bool(true)) {
        return None;
    }
    let s = |k: &str| -> Option<String> {
        let v = o.get(k)?.as_str()?.trim();
        (!v.is_empty()).then(|| v.to_string())
    };
    let expires_at = s("expires_at")?;
    if !looks_like_datetime(&expires_at) {
        return None;
    }
    s("token_type")?;
    Some(Pairing {
        gateway_id: s("gateway_id")?,
        team_id: s("team_id")?,
        access_token: s("access_token")?,
        refresh_token: s("refresh_token")?,
        expires_at,
    })
}

/// An ISO 8601 date-time with `Z` or a numeric offset (never panics on odd input).
fn looks_like_datetime(s: &str) -> bool {
    let has_zone = s.ends_with(['Z', 'z'])
        || s.get(19..)
            .is_some_and(|tail| tail.contains(['+', '-']) && tail.is_ascii());
    has_zone && crate::util::parse_rfc3339_ms(s).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_body() -> Value {
        json!({"success": true, "gateway_id": "g", "team_id": "t", "access_token": "a.b.c",
               "refresh_token": "r", "expires_at": "2026-01-05T11:11:12Z", "token_type": "bearer"})
    }

    #[test]
    fn accepts_the_exact_success_shape() {
        let p = parse_pairing_reply(200, ok_body().to_string().as_bytes()).unwrap();
        assert_eq!(p.gateway_id, "g");
        assert_eq!(p.refresh_token, "r");
        let mut offs = ok_body();
        offs["expires_at"] = json!("2026-01-05T11:11:12.123+02:00");
        assert!(parse_pairing_reply(201, offs.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn rejects_extra_keys_numbers_and_blanks() {
        let mut extra = ok_body();
        extra["user"] = json!({});
        let e = parse_pairing_reply(200, extra.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("did not match the expected contract"), "{e}");
        let mut num = ok_body();
        num["expires_at"] = json!(1767611472);
        assert!(parse_pairing_reply(200, num.to_string().as_bytes()).is_err());
        let mut blank = ok_body();
        blank["gateway_id"] = json!("  ");
        assert!(parse_pairing_reply(200, blank.to_string().as_bytes()).is_err());
        let mut odd = ok_body();
        odd["expires_at"] = json!("2026-01-05T11:11:1é");
        assert!(parse_pairing_reply(200, odd.to_string().as_bytes()).is_err());
        let mut nozone = ok_body();
        nozone["expires_at"] = json!("2026-01-05T11:11:12");
        assert!(parse_pairing_reply(200, nozone.to_string().as_bytes()).is_err());
        assert!(parse_pairing_reply(200, b"<html>")
            .unwrap_err()
            .contains("contract"));
    }

    #[test]
    fn shows_the_backend_error() {
        let e = parse_pairing_reply(400, br#"{"success":false,"error":"Pairing code expired"}"#)
            .unwrap_err();
        assert_eq!(e, "Pairing failed: Pairing code expired");
        assert_eq!(
            parse_pairing_reply(502, b"bad gateway").unwrap_err(),
            "Pairing failed with status 502"
        );
    }
}
