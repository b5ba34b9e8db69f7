//! GoTrue subset of the local backend: /user, refresh rotation with the reuse interval, error
//! shapes, expiry, and persistence of rows and sessions across a restart.

mod support;
use serde_json::{json, Value};
use std::time::Duration;
use support::emulator::*;

fn refresh(b: &Backend, rt: &str) -> Resp {
    b.refresh_with(rt, &[("X-Supabase-Api-Version", "2024-01-01")])
}

#[test]
fn get_user_accepts_valid_and_refuses_forged_tokens() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let r = b.get_user(&g.access_token);
    assert_eq!(r.status, 200);
    let u = r.json();
    assert_eq!(u["role"], "authenticated");
    assert_eq!(u["aud"], "authenticated");
    assert!(u["id"].is_string());
    // A forged bearer (signature from another secret) is a 401 bad_jwt.
    let mut parts: Vec<String> = g.access_token.split('.').map(str::to_string).collect();
    parts[2] = "AAAA".into();
    let forged = parts.join(".");
    let r = b.get_user(&forged);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "bad_jwt");
    assert_eq!(r.header("x-supabase-api-version"), Some("2024-01-01"));
    // The anon key is not a user.
    let r = b.get_user(&b.anon);
    assert_eq!(r.status, 403);
}

#[test]
fn refresh_rotates_and_honours_the_reuse_interval() {
    let b = Backend::start(&["--refresh-reuse-secs", "30"]);
    let g = b.pair(None);
    let r = refresh(&b, &g.refresh_token);
    assert_eq!(r.status, 200, "{}", r.body);
    let s1 = r.json();
    for k in [
        "access_token",
        "refresh_token",
        "expires_in",
        "expires_at",
        "token_type",
        "user",
    ] {
        assert!(s1.get(k).is_some(), "session lacks {k}");
    }
    assert_eq!(s1["token_type"], "bearer");
    assert!(s1["expires_in"].as_u64().unwrap() > 0);
    let rt1 = s1["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, g.refresh_token, "refresh tokens rotate on use");
    // The new access token works.
    let at1 = s1["access_token"].as_str().unwrap();
    assert_eq!(b.req("GET", "/rest/v1/gateway_jobs", at1, None).status, 200);
    // The spent token within the reuse interval gives the session's current refresh token.
    let r = refresh(&b, &g.refresh_token);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["refresh_token"], json!(rt1));
    // The chain continues.
    let r = refresh(&b, &rt1);
    assert_eq!(r.status, 200);
    let rt2 = r.json()["refresh_token"].as_str().unwrap().to_string();
    let r = refresh(&b, &g.refresh_token);
    assert_eq!(
        r.json()["refresh_token"],
        json!(rt2),
        "reuse follows to the newest token"
    );
}

#[test]
fn spent_token_after_the_interval_is_refused_and_revokes_the_session() {
    let b = Backend::start(&["--refresh-reuse-secs", "0"]);
    let g = b.pair(None);
    let r = refresh(&b, &g.refresh_token);
    assert_eq!(r.status, 200);
    let rt1 = r.json()["refresh_token"].as_str().unwrap().to_string();
    // Once at least a millisecond has passed, the (zero) reuse interval is over.
    let mut refused = None;
    wait_until(
        Duration::from_secs(5),
        "the spent token to be refused",
        || {
            let r = refresh(&b, &g.refresh_token);
            let done = r.status == 400;
            if done {
                refused = Some(r);
            }
            done
        },
    );
    let r = refused.unwrap();
    assert_eq!(r.json()["code"], "refresh_token_already_used");
    assert_eq!(r.json()["message"], "Invalid Refresh Token: Already Used");
    assert_eq!(r.header("x-supabase-api-version"), Some("2024-01-01"));
    // Reuse detection revoked the whole session, including the newest token.
    let r = refresh(&b, &rt1);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "refresh_token_not_found");
}

#[test]
fn unknown_refresh_token_and_bad_requests() {
    let b = Backend::start(&[]);
    let r = refresh(&b, "no-such-token");
    assert_eq!(r.status, 400);
    assert_eq!(
        (r.json()["code"].clone(), r.json()["message"].clone()),
        (
            json!("refresh_token_not_found"),
            json!("Invalid Refresh Token: Refresh Token Not Found")
        )
    );
    let r = b.req_full(
        "POST",
        "/auth/v1/token?grant_type=password",
        Some(&b.anon),
        Some(&b.anon),
        &[],
        Some("{}"),
    );
    assert_eq!(r.status, 400);
    let r = b.req_full(
        "POST",
        "/auth/v1/token?grant_type=refresh_token",
        Some(&b.anon),
        Some(&b.anon),
        &[],
        Some("nope"),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn access_tokens_expire() {
    let b = Backend::start(&["--access-token-ttl", "1"]);
    let g = b.pair(None);
    assert_eq!(
        b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None)
            .status,
        200
    );
    wait_until(Duration::from_secs(5), "the access token to expire", || {
        b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None)
            .status
            == 401
    });
    let r = b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None);
    assert_eq!(r.json()["code"], "PGRST303");
    assert_eq!(r.json()["message"], "JWT expired");
    let r = b.get_user(&g.access_token);
    assert_eq!(r.status, 401);
    let r = b.heartbeat_ready(&g.access_token);
    assert_eq!(r.status, 401);
    // Refresh still works and yields a usable token.
    let r = refresh(&b, &g.refresh_token);
    assert_eq!(r.status, 200);
    let at = r.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(b.req("GET", "/rest/v1/gateway_jobs", &at, None).status, 200);
}

#[test]
fn logout_revokes_the_session() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let r = b.req_full(
        "POST",
        "/auth/v1/logout",
        Some(&b.anon),
        Some(&g.access_token),
        &[],
        Some("{}"),
    );
    assert_eq!(r.status, 204);
    assert_eq!(refresh(&b, &g.refresh_token).status, 400);
}

#[test]
fn data_file_persists_rows_sessions_and_keys_across_restart() {
    let dir = temp_dir("persist");
    let data = dir.join("backend.json");
    let data_s = data.to_str().unwrap().to_string();
    let b = Backend::start(&["--data", &data_s]);
    let g = b.pair(None);
    let job = b.enqueue(
        &g.team_id,
        Some(&g.gateway_id),
        json!({"job_type": "persisted"}),
    );
    let (anon, service) = (b.anon.clone(), b.service.clone());
    let st = b.terminate();
    assert!(
        st.success(),
        "SIGTERM must stop the backend cleanly: {st:?}"
    );
    assert!(data.exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let b = Backend::start(&["--data", &data_s]);
    assert_eq!(
        (b.anon.clone(), b.service.clone()),
        (anon, service),
        "keys survive a restart"
    );
    // The old access token still works and sees the job.
    let rows: Value = b
        .req(
            "GET",
            "/rest/v1/gateway_jobs?select=id,job_type",
            &g.access_token,
            None,
        )
        .json();
    assert_eq!(rows, json!([{"id": job["id"], "job_type": "persisted"}]));
    // The refresh token still rotates.
    assert_eq!(refresh(&b, &g.refresh_token).status, 200);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigint_with_open_websockets_stops_cleanly_and_persists() {
    let dir = temp_dir("sigint");
    let data = dir.join("backend.json");
    let b = Backend::start(&["--data", data.to_str().unwrap()]);
    let g = b.pair(None);
    let mut rt = b.realtime("2.0.0");
    rt.join_jobs(&g.access_token);
    // The insert is persisted at shutdown even if the 200 ms flush has not run yet.
    let job = b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    let st = b.stop_with(libc::SIGINT);
    assert_eq!(st.code(), Some(0));
    assert!(rt.closed_within(Duration::from_secs(5)));
    let saved = std::fs::read_to_string(&data).unwrap();
    assert!(saved.contains(job["id"].as_str().unwrap()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_data_file_is_refused_with_a_clear_message() {
    let dir = temp_dir("corrupt");
    let data = dir.join("backend.json");
    std::fs::write(&data, "{ not json").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_panorama-local-backend"))
        .args(["--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a valid snapshot"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&data).unwrap(),
        "{ not json",
        "the file is left untouched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unwritable_data_path_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_panorama-local-backend"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--data",
            "/nonexistent-dir-plb/backend.json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write data file"));
    assert!(
        out.stdout.is_empty(),
        "no ready line when it cannot persist"
    );
}

#[test]
fn ready_line_keys_in_documented_order() {
    let b = Backend::start(&[]);
    let line = b.ready_line.clone();
    assert!(line.starts_with("{\"url\":\"http://127.0.0.1:"), "{line}");
    let (u, a, s) = (
        line.find("\"url\"").unwrap(),
        line.find("\"anon_key\"").unwrap(),
        line.find("\"service_role_key\"").unwrap(),
    );
    assert!(u < a && a < s, "{line}");
    assert!(line.ends_with("}\n"));
}

#[test]
fn usage_errors_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_panorama-local-backend"))
        .args(["--access-token-ttl", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--access-token-ttl"));
}
