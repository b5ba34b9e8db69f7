//! Conformance of the local backend with the official supabase-js client (pinned in
//! tests/conformance/package-lock.json), run through node. Needs `npm ci` in tests/conformance
//! (CI's .ci/run does it). Set PANORAMA_SKIP_NODE_TESTS=1 to skip on a machine without node.

mod support;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::emulator::*;

#[test]
fn supabase_js_accepts_the_local_backend() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    if std::env::var("PANORAMA_SKIP_NODE_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping the supabase-js conformance test: PANORAMA_SKIP_NODE_TESTS=1");
        return;
    }
    assert!(
        dir.join("node_modules/@supabase/supabase-js").exists(),
        "tests/conformance/node_modules is missing: run `npm ci` in {} (needs node >= 20), \
         or set PANORAMA_SKIP_NODE_TESTS=1 to skip this test",
        dir.display()
    );
    let b = Backend::start(&[]);
    let mut child = Command::new("node")
        .arg("conformance.mjs")
        .current_dir(&dir)
        .env("PANORAMA_BACKEND_URL", &b.url)
        .env("PANORAMA_ANON_KEY", &b.anon)
        .env("PANORAMA_SERVICE_ROLE_KEY", &b.service)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run node ({e}); install node >= 20 or set PANORAMA_SKIP_NODE_TESTS=1")
        });
    // Kill node if the test fails or hangs.
    struct Kill(Option<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _guard = Kill(Some(child));
            panic!("the supabase-js conformance script did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "supabase-js conformance failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("conformance: all checks passed"),
        "{stdout}"
    );
    // Every check printed its line.
    assert!(stdout.matches("ok - ").count() >= 16, "{stdout}");
}
