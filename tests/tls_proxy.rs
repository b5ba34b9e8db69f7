//! Proxies and TLS (issue 13): the local backend serves https/wss (test certificates in
//! tests/fixtures/tls, committed: no certificate crate and no openssl at test time); the
//! gateway pairs, takes jobs and holds the realtime channel over TLS, directly and through a
//! loopback HTTP CONNECT proxy; `--ca-file`/`SSL_CERT_FILE` add the trusted root; a
//! certificate from an unknown CA fails with a clear error; and a `pair` with nothing
//! configured goes to the built-in production URL, which the test proxy refuses, so the error
//! names that URL while the test never reaches it.

mod support;

use std::time::Duration;

use serde_json::json;
use support::connect::*;

fn tls_backend() -> Backend {
    let args = tls_backend_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Backend::start_with(&args)
}

#[test]
fn pair_jobs_and_realtime_over_tls_through_a_connect_proxy() {
    let b = tls_backend();
    assert!(b.url.starts_with("https://127.0.0.1:"), "{}", b.url);
    let proxy = ConnectProxy::start();
    let mut gw = Gateway::new(&b);
    // A name only the proxy resolves: the gateway must go through it.
    gw.url = b.url.replace("127.0.0.1", "backend.test");
    gw.set_env("HTTPS_PROXY", &proxy.url);
    gw.set_env("SSL_CERT_FILE", &tls_fixture("ca.pem"));
    let (code, team) = b.pairing_code(None);
    gw.pair(&code);
    assert_eq!(gw.state()["supabaseUrl"], gw.url.as_str());
    gw.start();
    // Connected means the realtime channel is joined: wss through the tunnel.
    gw.wait_connection(
        "the gateway to connect over wss",
        "connected",
        Duration::from_secs(30),
    );
    let id = b.insert_job(&team, &gw.gateway_id(), "no_such_type", json!({}));
    let job = wait_job_done(&b, &id, Duration::from_secs(30));
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"], "Unsupported job type: no_such_type");
    let authority = gw.url.trim_start_matches("https://").to_string();
    let tunnels = proxy.targets();
    assert!(
        tunnels.len() >= 2 && tunnels.iter().all(|t| *t == authority),
        "REST and the websocket both tunnel to the backend: {tunnels:?}"
    );
    assert!(gw.log().contains("go through the proxy"), "{}", gw.log());
    assert!(gw.stop(Duration::from_secs(20)).success());

    // A loopback backend is never proxied (NO_PROXY is covered by net.rs's unit test); TLS
    // trusts the test CA through --ca-file.
    let before = proxy.targets().len();
    let mut gw2 = Gateway::new(&b);
    gw2.set_env("HTTPS_PROXY", &proxy.url);
    let (code, _) = b.pairing_code(Some(&team));
    let (rc, out, err) = gw2.run(&[
        "pair",
        &code,
        "--no-start",
        "--ca-file",
        &tls_fixture("ca.pem"),
    ]);
    assert_eq!(rc, 0, "{out} {err}");
    gw2.start_with(&["--ca-file", &tls_fixture("ca.pem")]);
    gw2.wait_connection(
        "the direct gateway to connect",
        "connected",
        Duration::from_secs(30),
    );
    assert_eq!(proxy.targets().len(), before, "loopback bypasses the proxy");
}

#[test]
fn a_certificate_from_an_unknown_ca_fails_with_a_clear_error() {
    let b = tls_backend();
    let gw = Gateway::new(&b);
    let (code, _) = b.pairing_code(None);
    // Only the webpki roots: the test CA is unknown.
    let (rc, _, err) = gw.run(&["pair", &code, "--no-start"]);
    assert_eq!(rc, 1);
    assert!(
        err.contains(&format!(
            "Could not reach the Panorama backend at {}",
            b.url
        )),
        "{err}"
    );
    assert!(err.contains("TLS certificate is not trusted"), "{err}");
    assert!(err.contains("--ca-file"), "{err}");
    // Another CA added: still not trusted.
    let (rc, _, err) = gw.run(&[
        "pair",
        &code,
        "--no-start",
        "--ca-file",
        &tls_fixture("other-ca.pem"),
    ]);
    assert_eq!(rc, 1);
    assert!(err.contains("TLS certificate is not trusted"), "{err}");
    // A CA file that is not PEM is named.
    let junk = gw.dir.path().join("junk.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    let (rc, _, err) = gw.run(&[
        "pair",
        &code,
        "--no-start",
        "--ca-file",
        junk.to_str().unwrap(),
    ]);
    assert_eq!(rc, 1);
    assert!(err.contains(junk.to_str().unwrap()), "{err}");
    // The code was never used: pairing with the right CA still works.
    let (rc, out, err) = gw.run(&[
        "pair",
        &code,
        "--no-start",
        "--ca-file",
        &tls_fixture("ca.pem"),
    ]);
    assert_eq!(rc, 0, "{out} {err}");
}

#[test]
fn pair_with_nothing_configured_names_the_builtin_url_and_never_reaches_it() {
    let b = Backend::start();
    let proxy = ConnectProxy::start();
    let gw = Gateway::new(&b);
    let t0 = std::time::Instant::now();
    let out = gw
        .command(&["pair", "ABCD-1234", "--no-start"])
        .env_remove("SUPABASE_URL")
        .env_remove("SUPABASE_ANON_KEY")
        .env("HTTPS_PROXY", &proxy.url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Could not reach the Panorama backend at https://api.panorama.app"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "fails fast");
    // The only place the request went: the refusing test proxy.
    assert_eq!(proxy.targets(), ["api.panorama.app:443"]);
    assert!(!gw.config_dir().join("gateway.json").exists());
}
