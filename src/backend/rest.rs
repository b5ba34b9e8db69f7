//! PostgREST (`{url}/rest/v1/...`) through the session: reads, conditional updates, inserts,
//! RPC. Bodies are bounded, every call has a timeout, errors keep the backend's message.

use std::time::Duration;

use serde_json::Value;

use super::session::Session;
use super::{encode_query, Error, HttpResponse, MAX_BODY, MAX_SMALL_BODY};

/// Default timeout of one REST call.
pub const REST_TIMEOUT: Duration = Duration::from_secs(15);

/// The timeout of one REST call: [`REST_TIMEOUT`], or `PANORAMA_GATEWAY_REST_TIMEOUT_MS` (a test
/// knob: lost replies are simulated by a backend slower than this).
pub fn rest_timeout() -> Duration {
    static T: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *T.get_or_init(|| crate::tuning::rest_timeout(REST_TIMEOUT))
}

fn path(table: &str, params: &[(&str, &str)]) -> String {
    if params.is_empty() {
        format!("/rest/v1/{table}")
    } else {
        format!("/rest/v1/{table}?{}", encode_query(params))
    }
}

fn check(resp: HttpResponse) -> Result<HttpResponse, Error> {
    if resp.is_success() {
        Ok(resp)
    } else {
        Err(Error::Status {
            status: resp.status,
            body: crate::util::truncate_chars(&resp.text(), 2000, "..."),
        })
    }
}

fn json_array(resp: &HttpResponse) -> Result<Vec<Value>, Error> {
    if resp.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    match serde_json::from_slice::<Value>(&resp.body) {
        Ok(Value::Array(rows)) => Ok(rows),
        Ok(Value::Object(o)) => Ok(vec![Value::Object(o)]),
        Ok(_) => Err(Error::Decode("expected a JSON array of rows".into())),
        Err(e) => Err(Error::Decode(format!("reply is not JSON: {e}"))),
    }
}

/// `GET /rest/v1/<table>?<params>` → rows.
pub fn select(s: &Session, table: &str, params: &[(&str, &str)]) -> Result<Vec<Value>, Error> {
    let resp = s.request(
        "GET",
        &path(table, params),
        &[("Accept-Profile", "public")],
        None,
        rest_timeout(),
        MAX_BODY,
    )?;
    json_array(&check(resp)?)
}

/// `GET /rest/v1/<table>?<params>` → each row's JSON text, undecoded: one row nested deeper
/// than the decoder's recursion limit, or otherwise odd, cannot fail the whole reply (serde's
/// raw values are skipped over without recursion). Decode them one by one.
pub fn select_raw(
    s: &Session,
    table: &str,
    params: &[(&str, &str)],
) -> Result<Vec<Box<serde_json::value::RawValue>>, Error> {
    let resp = check(s.request(
        "GET",
        &path(table, params),
        &[("Accept-Profile", "public")],
        None,
        rest_timeout(),
        MAX_BODY,
    )?)?;
    if resp.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&resp.body)
        .map_err(|e| Error::Decode(format!("reply is not a JSON array of rows: {e}")))
}

/// `PATCH /rest/v1/<table>?<params>` with `body`. With `returning`, sends
/// `Prefer: return=representation` and gives back the updated rows (empty: nothing matched).
pub fn update(
    s: &Session,
    table: &str,
    params: &[(&str, &str)],
    body: &Value,
    returning: bool,
) -> Result<Vec<Value>, Error> {
    let mut headers = vec![
        ("Content-Profile", "public"),
        ("Content-Type", "application/json"),
    ];
    if returning {
        headers.push(("Prefer", "return=representation"));
    }
    let resp = s.request(
        "PATCH",
        &path(table, params),
        &headers,
        Some(&body.to_string()),
        rest_timeout(),
        MAX_BODY,
    )?;
    let resp = check(resp)?;
    if returning {
        json_array(&resp)
    } else {
        Ok(Vec::new())
    }
}

/// `POST /rest/v1/<table>` (no Prefer: the backend answers 201 with an empty body).
pub fn insert(s: &Session, table: &str, body: &Value) -> Result<(), Error> {
    let resp = s.request(
        "POST",
        &path(table, &[]),
        &[
            ("Content-Profile", "public"),
            ("Content-Type", "application/json"),
        ],
        Some(&body.to_string()),
        rest_timeout(),
        MAX_SMALL_BODY,
    )?;
    check(resp).map(|_| ())
}
