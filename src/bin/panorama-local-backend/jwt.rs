//! HS256 JSON Web Tokens (sign and verify) with ring's HMAC-SHA256.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde_json::{Map, Value};

pub fn sign(secret: &[u8], claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let sig = hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

#[derive(Debug, Clone, PartialEq)]
pub enum JwtError {
    /// Not three base64url segments of JSON, or not HS256.
    Malformed(&'static str),
    BadSignature,
    /// `exp` is in the past (seconds ago).
    Expired(u64),
    /// Revoked by the `expire_access_tokens` fault.
    Revoked,
}

impl JwtError {
    pub fn describe(&self) -> String {
        match self {
            JwtError::Malformed(why) => format!("invalid JWT: unable to parse: {why}"),
            JwtError::BadSignature => "invalid JWT: signature is invalid".to_string(),
            JwtError::Expired(_) | JwtError::Revoked => {
                "invalid JWT: unable to parse or verify signature, token has invalid claims: token is expired".to_string()
            }
        }
    }
}

/// Verifies signature and structure; returns the claims. Expiry is checked by the caller
/// (see `auth::validate`) so that it can also apply fault-injected revocation.
pub fn verify(secret: &[u8], token: &str) -> Result<Map<String, Value>, JwtError> {
    let mut parts = token.split('.');
    let (h, p, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => (h, p, s),
        _ => return Err(JwtError::Malformed("expected three segments")),
    };
    let header = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| JwtError::Malformed("header is not base64url"))?;
    let header: Value =
        serde_json::from_slice(&header).map_err(|_| JwtError::Malformed("header is not JSON"))?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(JwtError::Malformed("only HS256 is accepted"));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let signing_input_len = h.len() + 1 + p.len();
    hmac::verify(&key, &token.as_bytes()[..signing_input_len], &sig)
        .map_err(|_| JwtError::BadSignature)?;
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| JwtError::Malformed("payload is not base64url"))?;
    match serde_json::from_slice::<Value>(&payload) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed("payload is not a JSON object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roundtrip_and_tamper() {
        let t = sign(b"secret", &json!({"role": "anon", "exp": 1}));
        let c = verify(b"secret", &t).unwrap();
        assert_eq!(c["role"], "anon");
        assert_eq!(verify(b"other", &t), Err(JwtError::BadSignature));
        assert!(matches!(
            verify(b"secret", "a.b"),
            Err(JwtError::Malformed(_))
        ));
    }
}
