//! Chaos soak (issue 12), run by `scripts/chaos.sh` (ignored in the normal suite: it takes
//! minutes). One gateway, the local backend with `--data`, a few hundred model_run jobs over
//! several minutes while the harness injects, at random (seeded): realtime drops, 5xx bursts,
//! delays, access-token expiry, SIGKILL and SIGTERM of the daemon with restarts, and restarts
//! of the backend on the same data. At the end: every job terminal, none run twice (the fake
//! CLI records each execution per job), none stuck, no process of ours left, the gateway
//! connected and serving. Prints the seed and the figures.
//!
//! `CHAOS_SEED` (default: the clock), `CHAOS_JOBS` (300), `CHAOS_SECS` (180).

mod connect_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use connect_support::*;
use serde_json::{json, Value};

/// xorshift64*: small, seeded, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Processes (other than this test) whose environment carries `mark`.
fn marked_processes(mark: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    processes()
        .into_iter()
        .filter(|(pid, st, _)| *pid != me && *st != 'Z')
        .filter(|(pid, _, _)| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|e| e.split(|b| *b == 0).any(|kv| kv == mark.as_bytes()))
                .unwrap_or(false)
        })
        .map(|(pid, _, _)| pid)
        .collect()
}

struct Soak {
    b: Backend,
    gw: Gateway,
    team: String,
    gid: String,
    rec: PathBuf,
    args: Vec<String>,
    figures: BTreeMap<&'static str, u64>,
}

impl Soak {
    fn count(&mut self, what: &'static str) {
        *self.figures.entry(what).or_default() += 1;
    }

    fn start_daemon(&mut self) {
        let a: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.gw.start_with(&a);
        self.count("daemon starts");
    }

    fn submit(&mut self, n: u64, rng: &mut Rng) -> String {
        let slow = match rng.below(10) {
            0..=2 => " SLOW1",
            3 => " SLOW2",
            _ => "",
        };
        let prompt = fake_cli_prompt(&self.rec, &format!("j{n}"), &format!("Job {n}.{slow}"), &[]);
        self.b.insert_job(
            &self.team,
            &self.gid,
            "model_run",
            json!({"provider": "claude_code", "model": "claude-sonnet-4-5",
                   "output_format": "text", "prompt": prompt}),
        )
    }

    /// One fault, chosen at random.
    fn fault(&mut self, rng: &mut Rng) {
        let paths = ["rest", "functions", "auth", "all", "realtime"];
        match rng.below(6) {
            0 => {
                self.b.fault(json!({"drop_realtime": true}));
                self.count("realtime drops");
            }
            1 | 2 => {
                let status = [500, 502, 503, 504][rng.below(4) as usize];
                let p = paths[rng.below(paths.len() as u64) as usize];
                self.b.fault(
                    json!({"fail_next": {"count": 1 + rng.below(6), "status": status, "paths": p}}),
                );
                self.count("5xx bursts");
            }
            3 => {
                let p = paths[rng.below(4) as usize];
                self.b.fault(json!({"delay_next": {"count": 1 + rng.below(5), "ms": 200 + rng.below(2500), "paths": p}}));
                self.count("delays");
            }
            4 => {
                self.b.fault(json!({"expire_access_tokens": true}));
                self.count("token expiries");
            }
            _ => {
                self.b
                    .fault(json!({"mute_realtime_ms": 500 + rng.below(3000)}));
                self.count("realtime mutes");
            }
        }
    }

    /// SIGKILL of the daemon alone: its CLIs live on as orphans, as after a crash.
    fn kill_daemon(&mut self) {
        self.gw.kill9();
        self.count("daemon SIGKILLs");
        self.start_daemon();
    }

    fn term_daemon(&mut self) {
        let st = self.gw.stop(Duration::from_secs(60));
        assert_eq!(st.code(), Some(0), "a SIGTERM'd daemon exits 0");
        self.count("daemon SIGTERMs");
        self.start_daemon();
    }

    fn restart_backend(&mut self) {
        self.b.restart();
        self.count("backend restarts");
    }
}

fn records(rec: &Path, n: u64) -> usize {
    fake_cli_records(rec, &format!("j{n}")).len()
}

#[test]
#[ignore = "minutes long; run by scripts/chaos.sh"]
fn chaos_soak() {
    let seed = env_u64(
        "CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let total = env_u64("CHAOS_JOBS", 300);
    let secs = env_u64("CHAOS_SECS", 180);
    eprintln!("chaos: seed={seed} jobs={total} secs={secs}");
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);

    let data = TempDir::new("chaos-data");
    let data_file = data.path().join("backend.json");
    let b = Backend::start_with(&["--data", &data_file.display().to_string()]);
    let mut gw = Gateway::new(&b);
    let (root, bin, rec) = fake_cli_dirs(&mut gw);
    for (k, v) in [
        ("PANORAMA_GATEWAY_DRAIN_TIMEOUT_MS", "8000"),
        ("PANORAMA_GATEWAY_COMPLETE_RETRY_MS", "4000"),
        ("PANORAMA_GATEWAY_CONCURRENCY", "4"),
    ] {
        gw.set_env(k, v);
    }
    let (code, team) = b.pairing_code(None);
    gw.pair(&code);
    let gid = gw.gateway_id();
    // Every process of a job carries the mark; SLOW1/SLOW2 prompts take 1 or 2 s.
    let mark = format!("CHAOS_MARK={}", root.display());
    let fake = fake_cli_wrapper(&bin, "claude", None);
    let chaos = bin.join("claude-chaos");
    std::fs::write(
        &chaos,
        format!(
            "#!/bin/sh\nexport {mark}\ntmp=$(mktemp)\ncat > \"$tmp\"\nall=\"$* $(cat \"$tmp\")\"\nexec 0<\"$tmp\"\nrm -f \"$tmp\"\ncase \"$all\" in *SLOW1*) sleep 1;; *SLOW2*) sleep 2;; esac\nexec '{}' \"$@\"\n",
            fake.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&chaos, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut s = Soak {
        b,
        gw,
        team,
        gid,
        rec,
        args: vec!["--claude-cli".into(), chaos.display().to_string()],
        figures: BTreeMap::new(),
    };
    s.start_daemon();
    wait_for("ready", Duration::from_secs(60), || {
        (s.b.gateway_row(&s.gid)["status"] == "ready").then_some(())
    });

    // Scheduled disruptions (each at least once), plus random faults every tick.
    let t0 = Instant::now();
    let run_for = Duration::from_secs(secs);
    let mut plan: Vec<(f64, &str)> = vec![
        (0.2, "kill"),
        (0.35, "term"),
        (0.5, "backend"),
        (0.65, "kill"),
        (0.8, "backend"),
    ];
    let mut jobs: Vec<(u64, String)> = Vec::new();
    while t0.elapsed() < run_for || (jobs.len() as u64) < total {
        let frac = t0.elapsed().as_secs_f64() / run_for.as_secs_f64();
        let due = ((frac * total as f64).ceil() as u64).min(total);
        while (jobs.len() as u64) < due {
            let n = jobs.len() as u64;
            let id = s.submit(n, &mut rng);
            jobs.push((n, id));
        }
        if let Some(i) = plan.iter().position(|(at, _)| frac >= *at) {
            let (_, what) = plan.remove(i);
            match what {
                "kill" => s.kill_daemon(),
                "term" => s.term_daemon(),
                _ => s.restart_backend(),
            }
        } else if frac < 0.9 {
            if rng.chance(0.25) {
                s.fault(&mut rng);
            }
            if rng.chance(0.01) {
                s.kill_daemon();
            } else if rng.chance(0.005) {
                s.term_daemon();
            }
        }
        std::thread::sleep(Duration::from_millis(200 + rng.below(400)));
    }
    let chaos_secs = t0.elapsed().as_secs();
    s.b.fault(json!({"clear": true}));

    // Settle: every job terminal, none stuck.
    let t1 = Instant::now();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let rows = wait_for("every job terminal", Duration::from_secs(180), || {
        let rows = s.b.jobs(&s.gid);
        let open: Vec<&Value> = rows
            .iter()
            .filter(|r| {
                !matches!(
                    r["status"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
            })
            .collect();
        if !open.is_empty() && t1.elapsed() > Duration::from_secs(170) {
            eprintln!("stuck: {open:?}");
        }
        open.is_empty().then_some(rows)
    });
    let settle_ms = t1.elapsed().as_millis();
    let mut max_runs = 0;
    let mut completed_without_run = 0;
    for (n, id) in &jobs {
        let row = rows
            .iter()
            .find(|r| r["id"] == id.as_str())
            .expect("job row");
        let st = row["status"].as_str().unwrap().to_string();
        *by_status.entry(st.clone()).or_default() += 1;
        if st != "completed" {
            let e: String = row["error"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect();
            *errors.entry(e).or_default() += 1;
        }
        let runs = records(&s.rec, *n);
        assert!(runs <= 1, "job {n} ({id}) ran {runs} times: {row}");
        max_runs = max_runs.max(runs);
        if st == "completed" && runs == 0 {
            completed_without_run += 1;
        }
    }
    assert_eq!(
        completed_without_run, 0,
        "a completed model_run ran its CLI"
    );

    // Serving and connected; then nothing of ours is left running.
    let d = s.b.insert_job(&s.team, &s.gid, "diagnostic", json!({}));
    assert_eq!(
        wait_job_done(&s.b, &d, Duration::from_secs(60))["status"],
        "completed"
    );
    s.gw.wait_connection("connected at the end", "connected", Duration::from_secs(60));
    let left = marked_processes(&mark);
    assert!(left.is_empty(), "processes of ours left: {left:?}");
    assert_eq!(s.gw.stop(Duration::from_secs(60)).code(), Some(0));
    let left = marked_processes(&mark);
    assert!(
        left.is_empty(),
        "processes of ours left after stop: {left:?}"
    );

    println!("chaos soak: seed={seed}");
    println!(
        "  {} jobs over {chaos_secs} s of chaos; all terminal {settle_ms} ms after it ended",
        jobs.len()
    );
    println!("  status: {by_status:?}");
    println!("  errors: {errors:?}");
    println!("  executions per job: max {max_runs} (none twice)");
    for (k, v) in &s.figures {
        println!("  {k}: {v}");
    }
}
