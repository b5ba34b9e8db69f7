//! The daemon's counters and the Prometheus text format (exposition format 0.0.4) they are
//! served in. Counters are recorded by the threads that see the events (worker: jobs,
//! ingress: reconnects, session: token refreshes); gauges are read at scrape time by the
//! caller and passed in as [`Gauges`]. No dependencies: a leaf module.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the job duration histogram: from a quick diagnostic to a long
/// model or subagent run.
pub const DURATION_BUCKETS: [f64; 11] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Per bucket (not cumulative); the last slot is +Inf.
    counts: [u64; DURATION_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }
}

/// Counters of one daemon process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (job_type, outcome) → finished jobs.
    jobs: Mutex<BTreeMap<(String, String), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
    reconnects: AtomicU64,
}

/// Point-in-time values the caller reads when it is scraped.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub connected: bool,
    pub queue_depth: usize,
    pub in_flight: usize,
    /// Seconds since the last accepted heartbeat; None before the first.
    pub heartbeat_age_secs: Option<f64>,
    /// Results waiting in the spool: files and bytes.
    pub spool_files: u64,
    pub spool_bytes: u64,
    /// Access-token refreshes of the session so far.
    pub token_refreshes: u64,
    /// (provider id, status) per provider: healthy, unhealthy, unknown, unavailable.
    pub providers: Vec<(String, String)>,
    pub uptime_secs: f64,
}

/// Keeps label values printable: job types come from the backend, so anything odd is folded.
fn label(v: &str) -> String {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        v.to_string()
    } else {
        "other".to_string()
    }
}

fn fmt_f64(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

impl Metrics {
    /// A job finished with `outcome` (completed, failed, cancelled) after `took`.
    pub fn job_finished(&self, job_type: &str, outcome: &str, took: Duration) {
        let t = label(job_type);
        *crate::util::lock(&self.jobs)
            .entry((t.clone(), label(outcome)))
            .or_insert(0) += 1;
        crate::util::lock(&self.durations)
            .entry(t)
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// The realtime channel went down and will be reconnected.
    pub fn reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self, g: &Gauges) -> String {
        let mut o = String::with_capacity(4096);
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut o,
            "panorama_gateway_up",
            "gauge",
            "1 while the daemon runs.",
        );
        let _ = writeln!(o, "panorama_gateway_up 1");
        head(
            &mut o,
            "panorama_gateway_uptime_seconds",
            "gauge",
            "Seconds since the daemon started.",
        );
        let _ = writeln!(
            o,
            "panorama_gateway_uptime_seconds {}",
            fmt_f64(g.uptime_secs)
        );
        head(
            &mut o,
            "panorama_gateway_connected",
            "gauge",
            "1 when the job channel is connected and heartbeats are accepted.",
        );
        let _ = writeln!(o, "panorama_gateway_connected {}", u8::from(g.connected));
        head(
            &mut o,
            "panorama_gateway_jobs_total",
            "counter",
            "Jobs finished, by job type and outcome.",
        );
        for ((t, outcome), n) in crate::util::lock(&self.jobs).iter() {
            let _ = writeln!(
                o,
                "panorama_gateway_jobs_total{{type=\"{t}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        head(
            &mut o,
            "panorama_gateway_job_duration_seconds",
            "histogram",
            "Time from claim to result, by job type.",
        );
        for (t, h) in crate::util::lock(&self.durations).iter() {
            let mut cum = 0;
            for (i, c) in h.counts.iter().enumerate() {
                cum += c;
                let le = DURATION_BUCKETS
                    .get(i)
                    .map(|b| fmt_f64(*b))
                    .unwrap_or_else(|| "+Inf".into());
                let _ = writeln!(
                    o,
                    "panorama_gateway_job_duration_seconds_bucket{{type=\"{t}\",le=\"{le}\"}} {cum}"
                );
            }
            let _ = writeln!(
                o,
                "panorama_gateway_job_duration_seconds_sum{{type=\"{t}\"}} {}\npanorama_gateway_job_duration_seconds_count{{type=\"{t}\"}} {}",
                fmt_f64(h.sum),
                h.count
            );
        }
        head(
            &mut o,
            "panorama_gateway_queue_depth",
            "gauge",
            "Jobs received and waiting for a worker.",
        );
        let _ = writeln!(o, "panorama_gateway_queue_depth {}", g.queue_depth);
        head(
            &mut o,
            "panorama_gateway_jobs_in_flight",
            "gauge",
            "Jobs being run now.",
        );
        let _ = writeln!(o, "panorama_gateway_jobs_in_flight {}", g.in_flight);
        head(
            &mut o,
            "panorama_gateway_realtime_reconnects_total",
            "counter",
            "Times the realtime job channel went down and was reconnected.",
        );
        let _ = writeln!(
            o,
            "panorama_gateway_realtime_reconnects_total {}",
            self.reconnects.load(Ordering::Relaxed)
        );
        head(
            &mut o,
            "panorama_gateway_token_refreshes_total",
            "counter",
            "Access-token refreshes of the gateway session.",
        );
        let _ = writeln!(
            o,
            "panorama_gateway_token_refreshes_total {}",
            g.token_refreshes
        );
        head(
            &mut o,
            "panorama_gateway_heartbeat_age_seconds",
            "gauge",
            "Seconds since the backend last accepted a heartbeat (NaN before the first).",
        );
        let _ = writeln!(
            o,
            "panorama_gateway_heartbeat_age_seconds {}",
            g.heartbeat_age_secs
                .map(fmt_f64)
                .unwrap_or_else(|| "NaN".into())
        );
        head(
            &mut o,
            "panorama_gateway_spool_files",
            "gauge",
            "Job results spooled to disk, waiting for the backend.",
        );
        let _ = writeln!(o, "panorama_gateway_spool_files {}", g.spool_files);
        head(
            &mut o,
            "panorama_gateway_spool_bytes",
            "gauge",
            "Size of the spooled results.",
        );
        let _ = writeln!(o, "panorama_gateway_spool_bytes {}", g.spool_bytes);
        head(
            &mut o,
            "panorama_gateway_provider_healthy",
            "gauge",
            "1 when the provider CLI's last health check passed, by provider and status.",
        );
        for (p, status) in &g.providers {
            let _ = writeln!(
                o,
                "panorama_gateway_provider_healthy{{provider=\"{}\",status=\"{}\"}} {}",
                label(p),
                label(status),
                u8::from(status == "healthy")
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_are_folded() {
        let m = Metrics::default();
        m.job_finished("diagnostic", "completed", Duration::from_millis(40));
        m.job_finished("diagnostic", "completed", Duration::from_millis(700));
        m.job_finished("bad\"type\n", "failed", Duration::from_secs(900));
        m.reconnect();
        let text = m.render(&Gauges {
            providers: vec![("claude_code".into(), "healthy".into())],
            ..Default::default()
        });
        assert!(text
            .contains("panorama_gateway_jobs_total{type=\"diagnostic\",outcome=\"completed\"} 2"));
        assert!(text.contains(
            "panorama_gateway_job_duration_seconds_bucket{type=\"diagnostic\",le=\"0.05\"} 1"
        ));
        assert!(text.contains(
            "panorama_gateway_job_duration_seconds_bucket{type=\"diagnostic\",le=\"1\"} 2"
        ));
        assert!(text.contains(
            "panorama_gateway_job_duration_seconds_bucket{type=\"other\",le=\"+Inf\"} 1"
        ));
        assert!(text.contains("panorama_gateway_realtime_reconnects_total 1"));
        assert!(text.contains("panorama_gateway_heartbeat_age_seconds NaN"));
        assert!(!text.contains("bad"));
    }
}
