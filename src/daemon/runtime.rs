//! The runtime: owns the reader, reconcile, worker and heartbeat threads, and the drain.
//! Owner: Connect (issue 4). Called by `start` (issue 2) once the pid lock is held, logging is
//! set up and signals are routed into `ctx.shutdown`.
//!
//! Data flows one way: realtime reader / reconcile → bounded channel (dedup by job id) →
//! workers (claim → handler → complete) → backend. Completions the backend does not take are
//! retried with backoff, then spooled to owner-only files and flushed after a reconnect or a
//! restart. A result the spool cannot store either is held in memory (bounded), retried by the
//! reconcile loop and once more at shutdown, counted as `results_pending` in the status file,
//! and named in an error line if still undeliverable at exit. `subagent_cancel` jobs bypass
//! the channel.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use serde_json::{json, Value};

use crate::backend::capabilities::capabilities;
use crate::backend::jobs::{self as wire, GatewayEvent, JobRow, Level};
use crate::backend::realtime::{self, ReaderConfig, ReaderHooks};
use crate::backend::session::{env_ms, Session, TokenStore};
use crate::backend::spool::Spool;
use crate::backend::{functions, Backoff, Error};
use crate::config::state::GatewayState;
use crate::config::{BackendConfig, Settings};
use crate::daemon::shutdown::Shutdown;
use crate::daemon::status::RuntimeStatus;
use crate::exec::{CancelToken, Children};
use crate::jobs::{self, FinalStatus, JobContext, Outcome};
use crate::providers::Registry;
use crate::util::now_rfc3339;
use crate::util::parse_rfc3339_ms;

/// Edits the daemon's status; the closure changes the current status and the file is rewritten
/// atomically. Provided by the daemon (issue 2).
pub type StatusUpdater = Arc<dyn Fn(&dyn Fn(&mut RuntimeStatus)) + Send + Sync>;

/// What `start` hands to the runtime.
pub struct RuntimeContext {
    pub settings: Settings,
    pub shutdown: Shutdown,
    pub status: StatusUpdater,
}

/// The error text of jobs stopped by the drain timeout.
pub const SHUTDOWN_JOB_ERROR: &str = "gateway shut down before the job finished";
/// The error text of jobs a previous process left `running`.
pub const RESTART_JOB_ERROR: &str = "gateway restarted during the job";

/// Timers and sizes, from the environment (documented in docs/README-connect.md).
#[derive(Debug, Clone)]
pub struct Tuning {
    pub concurrency: usize,
    pub heartbeat: Duration,
    pub reconcile: Duration,
    pub drain_timeout: Duration,
    /// How long a completion is retried before it goes to the spool.
    pub complete_retry: Duration,
    pub queue_capacity: usize,
}

impl Tuning {
    pub fn from_env() -> Tuning {
        let concurrency = match std::env::var("PANORAMA_GATEWAY_CONCURRENCY") {
            Err(_) => 10,
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n.min(256),
                _ => {
                    log::warn!(target: "runtime", "PANORAMA_GATEWAY_CONCURRENCY={v:?} is not a positive whole number; using 10");
                    10
                }
            },
        };
        Tuning {
            concurrency,
            heartbeat: env_ms("PANORAMA_GATEWAY_HEARTBEAT_MS", 30_000),
            reconcile: env_ms("PANORAMA_GATEWAY_RECONCILE_MS", 5_000),
            drain_timeout: env_ms("PANORAMA_GATEWAY_DRAIN_TIMEOUT_MS", 90_000),
            complete_retry: env_ms("PANORAMA_GATEWAY_COMPLETE_RETRY_MS", 15_000),
            queue_capacity: 4096,
        }
    }
}

/// `None`, or longer ago than `d`.
trait ElapsedExt {
    fn is_none_or_elapsed(&self, d: Duration) -> bool;
}

impl ElapsedExt for Option<Instant> {
    fn is_none_or_elapsed(&self, d: Duration) -> bool {
        !self.is_some_and(|t| t.elapsed() < d)
    }
}

/// The install-level toggle (`full_control_enabled` in gateway.json), read now: the
/// `full-control` command may have changed it since the daemon started.
fn install_full_control(config_path: &std::path::Path) -> bool {
    crate::config::state::load(config_path)
        .ok()
        .flatten()
        .is_some_and(|s| s.full_control_enabled)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// gateway.json access (tokens, toggles)

/// Persists rotated tokens into gateway.json (read-modify-write, unknown keys kept).
struct FileTokenStore {
    settings: Settings,
    gateway_id: String,
}

impl TokenStore for FileTokenStore {
    fn save(&self, access_token: &str, refresh_token: &str) -> Result<(), String> {
        let (a, r) = (access_token.to_string(), refresh_token.to_string());
        let me = self.gateway_id.clone();
        let mut foreign = false;
        let written = crate::config::state::update(
            &self.settings.paths.config_path,
            |s: &mut GatewayState| {
                // A `pair` since this process started made gateway.json another gateway's:
                // never overwrite its tokens with ours.
                if s.gateway_id.as_deref() == Some(me.as_str()) {
                    s.access_token = Some(a);
                    s.refresh_token = Some(r);
                } else {
                    foreign = true;
                }
            },
        );
        written.map_err(|e| e.to_string())?;
        if foreign {
            return Err("gateway.json now holds another pairing (re-paired while running); restart the gateway to use it".into());
        }
        Ok(())
    }

    fn load(&self) -> Option<(String, String)> {
        let s = crate::config::state::load(&self.settings.paths.config_path).ok()??;
        // Tokens of another pairing (a new gateway id) are no use to this process.
        if s.gateway_id.as_deref() != Some(self.gateway_id.as_str()) {
            return None;
        }
        Some((s.access_token?, s.refresh_token?))
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state of the threads

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ingress {
    Pending,
    Ok,
    Failing,
}

struct RunningJob {
    cancel: CancelToken,
    job_type: String,
}

struct Shared {
    session: Arc<Session>,
    shutdown: Shutdown,
    status: StatusUpdater,
    tuning: Tuning,
    providers: Arc<Registry>,
    children: Arc<Children>,
    spool: Spool,
    device_name: String,
    settings: Settings,
    process_start_ms: u64,
    /// False once the drain began: new jobs are left queued for the next process.
    accepting: AtomicBool,
    /// Ids queued locally or running (dedup of realtime + reconcile).
    seen: Mutex<HashSet<String>>,
    running: Arc<Mutex<HashMap<String, RunningJob>>>,
    /// Boxed rows: the bounded channel preallocates its slots, keep them pointer-sized.
    queue: Sender<Box<JobRow>>,
    completed: AtomicU64,
    failed: AtomicU64,
    realtime_up: AtomicBool,
    realtime_detail: Mutex<Option<String>>,
    last_reconcile_ok: Mutex<Option<Instant>>,
    ingress: Mutex<Ingress>,
    /// Wakes the reconcile thread (after a subscribe).
    reconcile_wake: Sender<()>,
    /// Wakes the heartbeat thread (status change, new event).
    heartbeat_wake: Sender<()>,
    events: Mutex<VecDeque<GatewayEvent>>,
    /// Send a heartbeat at the next wake-up even if nothing changed (SIGHUP reload).
    force_heartbeat: AtomicBool,
    /// When the current heartbeat outage was last logged as a warning.
    heartbeat_fail_logged: Mutex<Option<Instant>>,
    /// No event insert before this (after a transient failure).
    events_retry_at: Mutex<Option<Instant>>,
    malformed_logged: Mutex<HashSet<String>>,
    last_status_push: Mutex<Option<Instant>>,
    last_reconnect_event: Mutex<Option<Instant>>,
    down_since: Mutex<Option<Instant>>,
    /// `team_gateways.full_control_enabled` as last read (machine control, PROTOCOL.md §8).
    team_full_control: AtomicBool,
    /// Held while a heartbeat is on the wire: never two in flight (the drain sends its own).
    heartbeat_in_flight: Mutex<()>,
    /// The status of the last heartbeat sent (the reconcile loop wakes the heartbeat thread
    /// when the computed status differs).
    heartbeat_sent: Mutex<Option<&'static str>>,
    /// When the backend last accepted a heartbeat, and the error of the last one if it failed.
    heartbeat_ok_at: Mutex<Option<Instant>>,
    heartbeat_error: Mutex<Option<String>>,
    /// The error of the last reconcile, if it failed.
    reconcile_error: Mutex<Option<String>>,
    /// Completions that could neither be delivered nor spooled (job id, body), oldest first:
    /// retried by the reconcile loop and once more at shutdown. Bounded by [`MAX_PENDING`].
    pending: Mutex<VecDeque<(String, Value)>>,
}

/// At most this many undeliverable, unspoolable results are held in memory (bodies can be
/// large). Beyond it the oldest is given up, loudly.
const MAX_PENDING: usize = 256;

impl Shared {
    /// Queues a gateway_events row (bounded; the heartbeat thread sends it).
    fn event(&self, level: Level, code: &str, message: String, details: Value) {
        let mut q = lock(&self.events);
        if q.len() >= 100 {
            q.pop_front();
        }
        q.push_back(GatewayEvent {
            level,
            code: Some(code.to_string()),
            provider: None,
            message,
            details,
        });
        drop(q);
        let _ = self.heartbeat_wake.try_send(());
    }

    fn connection_state(&self) -> (String, Option<String>) {
        if self.shutdown.is_draining() {
            return ("draining".into(), None);
        }
        if let Some(r) = self.session.reauth_reason() {
            return (
                "reauth_required".into(),
                Some(format!(
                    "re-pair needed: the backend refused the refresh token ({r}); run `panorama-gateway pair <CODE>`"
                )),
            );
        }
        // Job queries failing for longer than the ingress window: Panorama sees `error`.
        if *lock(&self.ingress) == Ingress::Failing && !self.ingress_fresh() {
            let e = lock(&self.reconcile_error).clone().unwrap_or_default();
            return (
                "disconnected".into(),
                Some(format!(
                    "the backend does not answer job queries ({e}); retrying every {} ms",
                    self.tuning.reconcile.as_millis()
                )),
            );
        }
        // Heartbeats failing for longer than the backend's staleness window (3 intervals,
        // 90 s by default), or never accepted: Panorama shows this gateway offline.
        if let Some(e) = lock(&self.heartbeat_error).clone() {
            if lock(&self.heartbeat_ok_at).is_none_or_elapsed(self.tuning.heartbeat * 3) {
                return (
                    "disconnected".into(),
                    Some(format!(
                        "heartbeats are not accepted ({e}); Panorama shows this gateway offline until one is"
                    )),
                );
            }
        }
        if self.realtime_up.load(Ordering::SeqCst) {
            return ("connected".into(), None);
        }
        let detail = lock(&self.realtime_detail).clone();
        if detail.is_some() {
            ("disconnected".into(), detail)
        } else {
            ("connecting".into(), None)
        }
    }

    /// The last successful reconcile is younger than 3 reconcile intervals (backend.md §5.3).
    fn ingress_fresh(&self) -> bool {
        lock(&self.last_reconcile_ok).is_some_and(|t| t.elapsed() <= self.tuning.reconcile * 3)
    }

    /// Rewrites the status file: always when `force`, else at most every 200 ms.
    fn push_status(&self, force: bool) {
        {
            let mut last = lock(&self.last_status_push);
            if !force && last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let (conn, detail) = self.connection_state();
        let in_flight = lock(&self.running).len() as u64;
        let completed = self.completed.load(Ordering::SeqCst);
        let failed = self.failed.load(Ordering::SeqCst);
        let spooled = self.spool.len() as u64;
        let pending = lock(&self.pending).len() as u64;
        let last_rec = lock(&self.last_reconcile_ok).map(instant_to_rfc3339);
        (self.status)(&|s: &mut RuntimeStatus| {
            s.connection = conn.clone();
            s.detail = detail.clone();
            s.jobs_in_flight = in_flight;
            s.jobs_completed = completed;
            s.jobs_failed = failed;
            s.results_spooled = spooled;
            s.results_pending = pending;
            if last_rec.is_some() {
                s.last_reconcile_at = last_rec.clone();
            }
        });
    }

    /// PROTOCOL.md §8 status: pending until the first reconcile, ready while reconciles succeed
    /// (within 3 intervals), error when they fail, pending while draining.
    fn heartbeat_status(&self) -> &'static str {
        if self.shutdown.is_draining() || !self.accepting.load(Ordering::SeqCst) {
            return "pending";
        }
        match *lock(&self.ingress) {
            Ingress::Pending => "pending",
            _ if self.ingress_fresh() => "ready",
            _ => "error",
        }
    }

    /// Takes a job from realtime or reconcile: only this gateway's queued jobs, once.
    fn offer(self: &Arc<Self>, job: JobRow) {
        if job.status != "queued"
            || job.gateway_id.as_deref() != Some(self.session.gateway_id.as_str())
        {
            return;
        }
        if !self.accepting.load(Ordering::SeqCst) {
            return;
        }
        if !lock(&self.seen).insert(job.id.clone()) {
            return;
        }
        if job.job_type == "subagent_cancel" {
            // Bypasses the queue and the concurrency limit.
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("cancel-job".into())
                .spawn(move || {
                    let id = job.id.clone();
                    me.process(job);
                    lock(&me.seen).remove(&id);
                });
            if let Err(e) = spawned {
                log::error!(target: "worker", "cannot start a thread for a subagent_cancel job: {e}; it stays queued");
            }
            return;
        }
        let id = job.id.clone();
        match self.queue.try_send(Box::new(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                lock(&self.seen).remove(&id);
                log::debug!(target: "ingress", "local queue full; job {id} stays queued for a later reconcile");
            }
        }
    }

    fn log_malformed(&self, id: Option<&str>, why: &str, source: &str) {
        let key = format!("{}:{why}", id.unwrap_or("?"));
        let fresh = {
            let mut m = lock(&self.malformed_logged);
            if m.len() > 10_000 {
                m.clear();
            }
            m.insert(key)
        };
        if fresh {
            log::warn!(target: "ingress", "skipped a malformed gateway job from {source}: id={} problem={why}", id.unwrap_or("unknown"));
            self.event(
                Level::Warn,
                "malformed_job",
                format!("Skipped a malformed gateway job row: {why}"),
                json!({ "job_id": id, "source": source }),
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // One job

    fn process(self: &Arc<Self>, job: JobRow) {
        let started_at = now_rfc3339();
        let claimed = match wire::claim(&self.session, &job.id, &started_at) {
            Ok(Some(row)) => row,
            Ok(None) => {
                log::debug!(target: "worker", "job {} was taken or cancelled before we claimed it", job.id);
                return;
            }
            // No answer, or an answer we cannot read: the PATCH may have landed (a timed-out
            // request can still reach the database later). Find out before moving on.
            Err(e)
                if e.is_retryable() || matches!(e, Error::Decode(_) | Error::TooLarge { .. }) =>
            {
                match self.resolve_claim(&job, &started_at, &e) {
                    Some(row) => row,
                    None => return,
                }
            }
            Err(e) => {
                log::warn!(target: "worker", "claim of job {} refused, it stays queued and is retried by the next reconcile: {e}", job.id);
                return;
            }
        };
        let cancel = CancelToken::new();
        lock(&self.running).insert(
            claimed.id.clone(),
            RunningJob {
                cancel: cancel.clone(),
                job_type: claimed.job_type.clone(),
            },
        );
        self.push_status(false);
        log::info!(target: "worker", "job started id={} type={} t_ms={}", claimed.id, claimed.job_type, unix_ms());
        let t0 = Instant::now();
        let outcome = self.run_handler(&claimed, &cancel);
        let outcome = if cancel.is_cancelled() && self.shutdown.is_immediate() {
            Outcome {
                status: FinalStatus::Failed,
                result: Some(
                    json!({ "message": SHUTDOWN_JOB_ERROR, "job_type": claimed.job_type }),
                ),
                error: Some(SHUTDOWN_JOB_ERROR.into()),
                debug: outcome.debug,
            }
        } else {
            outcome
        };
        if let Some(d) = &outcome.debug {
            if let Err(e) = wire::set_debug(&self.session, &claimed.id, d) {
                log::warn!(target: "worker", "could not store debug info of job {}: {e}", claimed.id);
            }
        }
        let body = wire::completion_body(
            outcome.status.as_str(),
            &outcome.result,
            &outcome.error,
            &now_rfc3339(),
        );
        self.deliver(&claimed.id, &body);
        match outcome.status {
            FinalStatus::Completed => self.completed.fetch_add(1, Ordering::SeqCst),
            _ => self.failed.fetch_add(1, Ordering::SeqCst),
        };
        log::info!(target: "worker", "job finished id={} type={} status={} duration_ms={}", claimed.id, claimed.job_type, outcome.status.as_str(), t0.elapsed().as_millis());
        lock(&self.running).remove(&claimed.id);
        self.push_status(false);
    }

    /// A claim whose reply was lost: re-read the job with backoff (500 ms doubling to 30 s)
    /// until the backend answers, then run it if our claim landed (recognised by the
    /// `started_at` we sent), re-claim it (same `started_at`) if it is still queued, or skip it.
    /// Meanwhile it counts as in flight, so a drain waits for it. Only an immediate stop ends
    /// the wait; a claim that landed unseen is then failed by the next start's recovery.
    fn resolve_claim(&self, job: &JobRow, started_at: &str, first: &Error) -> Option<JobRow> {
        log::warn!(target: "worker", "claim of job {} in doubt ({first}); checking whether it landed", job.id);
        lock(&self.running).insert(
            job.id.clone(),
            RunningJob {
                cancel: CancelToken::new(),
                job_type: job.job_type.clone(),
            },
        );
        let r = self.resolve_claim_loop(job, started_at);
        if r.is_none() {
            lock(&self.running).remove(&job.id);
            self.push_status(false);
        }
        r
    }

    fn resolve_claim_loop(&self, job: &JobRow, started_at: &str) -> Option<JobRow> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let t0 = Instant::now();
        let mut failures = 0u32;
        loop {
            if self.shutdown.wait_for(
                crate::daemon::shutdown::Level::Immediate,
                backoff.next_delay(),
            ) {
                log::warn!(target: "worker", "stopping with the claim of job {} unresolved; if it landed, the next start marks the job failed ({RESTART_JOB_ERROR})", job.id);
                return None;
            }
            let row = match wire::job_row(&self.session, &job.id) {
                Ok(r) => r,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 10 == 0 {
                        log::warn!(target: "worker", "cannot check the claim of job {} yet (try {failures}, {} s): {e}; retrying", job.id, t0.elapsed().as_secs());
                    }
                    continue;
                }
            };
            match wire::classify_claim(row.as_ref(), &self.session.gateway_id, started_at) {
                wire::ClaimCheck::Ours(row) => {
                    log::info!(target: "worker", "claim of job {} had landed (its reply was lost); running it", job.id);
                    return Some(*row);
                }
                wire::ClaimCheck::NotOurs(why) => {
                    log::info!(target: "worker", "claim of job {} did not land ({why}); skipping it", job.id);
                    return None;
                }
                wire::ClaimCheck::Malformed(why) => {
                    log::warn!(target: "worker", "claimed job {} has a malformed row ({why}); failing it", job.id);
                    let o = jobs::processing_failed(
                        &job.job_type,
                        &format!("malformed gateway job row: {why}"),
                    );
                    let body = wire::completion_body(
                        o.status.as_str(),
                        &o.result,
                        &o.error,
                        &now_rfc3339(),
                    );
                    self.deliver(&job.id, &body);
                    self.failed.fetch_add(1, Ordering::SeqCst);
                    return None;
                }
                // Not landed (or still on its way): claim again with the same `started_at`.
                // Whichever PATCH lands first wins; the other matches nothing.
                wire::ClaimCheck::StillQueued => {
                    match wire::claim(&self.session, &job.id, started_at) {
                        Ok(Some(row)) => {
                            log::info!(target: "worker", "claimed job {} on the second try", job.id);
                            return Some(row);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            log::debug!(target: "worker", "re-claim of job {} failed: {e}", job.id)
                        }
                    }
                }
            }
        }
    }

    /// The machine-control layers for a job (PROTOCOL.md §8): the team toggle (last
    /// control-state read) and heartbeat freshness (90 s) as of now; the install toggle is read
    /// from gateway.json only when the handler asks.
    fn control_source(&self) -> jobs::ControlSource {
        let team_enabled = self.team_full_control.load(Ordering::SeqCst);
        let heartbeat_fresh =
            lock(&self.heartbeat_ok_at).is_some_and(|t| t.elapsed() < Duration::from_secs(90));
        let config_path = self.settings.paths.config_path.clone();
        Arc::new(move || jobs::ControlState {
            install_enabled: install_full_control(&config_path),
            team_enabled,
            heartbeat_fresh,
        })
    }

    fn run_handler(&self, job: &JobRow, cancel: &CancelToken) -> Outcome {
        if job.job_type != "subagent_cancel" {
            match wire::idempotency_conflict(&self.session, job) {
                Ok(true) => {
                    let msg = "Duplicate gateway job idempotency key; skipping execution";
                    return Outcome {
                        status: FinalStatus::Cancelled,
                        result: Some(json!({
                            "message": msg,
                            "idempotency_key": job.idempotency_key,
                            "attempt": job.attempt,
                        })),
                        error: Some(msg.into()),
                        debug: None,
                    };
                }
                Ok(false) => {}
                Err(e) => {
                    log::warn!(target: "worker", "idempotency check of job {} failed, running it: {e}", job.id)
                }
            }
        }
        let ctx = JobContext {
            job_id: job.id.clone(),
            providers: self.providers.clone(),
            children: self.children.clone(),
            cancel: cancel.clone(),
            shutdown: self.shutdown.clone(),
            session: Some(self.session.clone()),
            control: self.control_source(),
            cancel_running: {
                let running = Arc::clone(&self.running);
                Arc::new(move |id: &str| match lock(&running).get(id) {
                    Some(r) => {
                        r.cancel.cancel();
                        true
                    }
                    None => false,
                })
            },
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| {
            jobs::dispatch(&job.job_type, &job.payload, &ctx)
        })) {
            Ok(o) => o,
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "the job handler panicked".into());
                log::error!(target: "worker", "handler of job {} ({}) panicked: {msg}", job.id, job.job_type);
                jobs::processing_failed(&job.job_type, &msg)
            }
        }
    }

    /// Completes a job: retries with backoff; spools it when the backend still does not take
    /// it (network, 5xx, lost session). Never drops a result silently.
    fn deliver(&self, job_id: &str, body: &Value) {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(4));
        let deadline = Instant::now() + self.tuning.complete_retry;
        loop {
            match wire::complete(&self.session, job_id, body) {
                Ok(()) => return,
                Err(e) if e.is_retryable() => {
                    if Instant::now() >= deadline || self.shutdown.is_immediate() {
                        log::warn!(target: "worker", "completion of job {job_id} not accepted yet ({e}); spooling it for later delivery");
                        break;
                    }
                    log::debug!(target: "worker", "completion of job {job_id} failed, retrying: {e}");
                    // An immediate stop cuts the wait short (the result goes to the spool).
                    self.shutdown.wait_for(
                        crate::daemon::shutdown::Level::Immediate,
                        backoff.next_delay(),
                    );
                }
                Err(e @ Error::Reauth(_)) => {
                    log::warn!(target: "worker", "completion of job {job_id} waits for a new session: {e}");
                    break;
                }
                Err(e) => {
                    self.reject_fallback(job_id, &e);
                    return;
                }
            }
        }
        match self.spool.put(job_id, body) {
            Ok(()) => {
                self.push_status(true);
                self.event(
                    Level::Warn,
                    "result_spooled",
                    format!("The result of job {job_id} could not be delivered yet; it is kept on the host and sent when the backend takes it"),
                    json!({ "job_id": job_id }),
                );
            }
            Err(e) => self.hold_pending(job_id, body, &e),
        }
    }

    /// A result the backend did not take and the spool could not store: kept in memory and
    /// retried (delivery and spooling) by the reconcile loop until shutdown, never dropped
    /// silently.
    fn hold_pending(&self, job_id: &str, body: &Value, spool_error: &str) {
        let n = {
            let mut p = lock(&self.pending);
            p.retain(|(id, _)| id != job_id);
            if p.len() >= MAX_PENDING {
                if let Some((old, _)) = p.pop_front() {
                    log::error!(target: "worker", "LOST RESULT of job {old}: more than {MAX_PENDING} results wait in memory (the spool is unwritable and the backend away); the next start fails it ({RESTART_JOB_ERROR}). Fix the spool directory {}", self.spool.dir().display());
                }
            }
            p.push_back((job_id.to_string(), body.clone()));
            p.len()
        };
        log::error!(target: "worker", "cannot spool the result of job {job_id}: {spool_error}; holding it in memory and retrying ({n} result(s) held). Fix the spool directory {} or free disk space: a result still held when the gateway stops is lost", self.spool.dir().display());
        self.event(
            Level::Error,
            "result_pending",
            format!("The result of job {job_id} could not be delivered nor stored on the host; it is held in memory and retried"),
            json!({ "job_id": job_id }),
        );
        self.push_status(true);
    }

    /// Retries the results held in memory: delivery first, then the spool. Once the backend
    /// fails transiently, the rest only try the spool (each delivery try could take a whole
    /// request timeout). Returns how many are still held.
    fn retry_pending(&self) -> usize {
        let held: Vec<(String, Value)> = lock(&self.pending).iter().cloned().collect();
        if held.is_empty() {
            return 0;
        }
        let mut backend_away = false;
        let mut done: Vec<String> = Vec::new();
        for (id, body) in &held {
            if !backend_away {
                match wire::complete(&self.session, id, body) {
                    Ok(()) => {
                        log::info!(target: "worker", "delivered the held result of job {id}");
                        done.push(id.clone());
                        continue;
                    }
                    Err(e) if e.is_retryable() || matches!(e, Error::Reauth(_)) => {
                        log::debug!(target: "worker", "held result of job {id} not accepted yet: {e}");
                        backend_away = true;
                    }
                    Err(e) => {
                        self.reject_fallback(id, &e);
                        done.push(id.clone());
                        continue;
                    }
                }
            }
            if self.spool.put(id, body).is_ok() {
                log::info!(target: "worker", "held result of job {id} written to the spool");
                done.push(id.clone());
            }
        }
        let left = {
            let mut p = lock(&self.pending);
            // Only what was retried goes: a newer body held meanwhile for the same job stays.
            p.retain(|(id, b)| {
                !held
                    .iter()
                    .any(|(hi, hb)| hi == id && hb == b && done.contains(id))
            });
            p.len()
        };
        if !done.is_empty() {
            self.push_status(true);
        }
        left
    }

    /// The backend refused a completion for good (say 413 for a result too large, or 400): the
    /// job must not stay `running`, so fail it with a small body that says why.
    fn reject_fallback(&self, job_id: &str, e: &Error) {
        log::error!(target: "worker", "the backend rejected the completion of job {job_id}: {e}; failing the job with a short error instead");
        let msg = crate::backend::truncate_chars(
            &format!("the backend rejected the gateway's job result: {e}"),
            1000,
        );
        let body = wire::completion_body(
            "failed",
            &Some(json!({ "message": "Gateway job result rejected by the backend" })),
            &Some(msg),
            &now_rfc3339(),
        );
        if let Err(e2) = wire::complete(&self.session, job_id, &body) {
            log::error!(target: "worker", "could not fail job {job_id} either ({e2}); it stays running until the next gateway restart fails it");
        }
    }

    /// Sends spooled completions; stops at the first transient failure (backend still away).
    fn flush_spool(&self) {
        let entries = self.spool.entries();
        if entries.is_empty() {
            return;
        }
        let mut sent = 0;
        for e in &entries {
            if self.shutdown.is_draining() {
                break; // the spool survives the restart
            }
            match wire::complete(&self.session, &e.job_id, &e.body) {
                Ok(()) => {
                    self.spool.remove(e);
                    sent += 1;
                }
                Err(err) if err.is_retryable() || matches!(err, Error::Reauth(_)) => {
                    log::info!(target: "spool", "backend still not taking spooled results ({err}); {} left", entries.len() - sent);
                    break;
                }
                Err(err) => {
                    self.reject_fallback(&e.job_id, &err);
                    self.spool.remove(e);
                }
            }
        }
        if sent > 0 {
            log::info!(target: "spool", "delivered {sent} spooled job results");
        }
        self.push_status(true);
    }

    /// Jobs of this gateway left `running` by an earlier process → failed.
    fn recover_stale_jobs(&self) -> Result<(), Error> {
        let rows = wire::running_jobs(&self.session)?;
        let mut n = 0;
        for (id, started_at, job_type) in rows {
            if lock(&self.running).contains_key(&id) {
                continue;
            }
            let started = started_at.as_deref().and_then(parse_rfc3339_ms);
            if started.is_some_and(|t| t >= self.process_start_ms) {
                continue;
            }
            let body = wire::completion_body(
                "failed",
                &Some(json!({ "message": RESTART_JOB_ERROR, "job_type": job_type })),
                &Some(RESTART_JOB_ERROR.into()),
                &now_rfc3339(),
            );
            wire::complete(&self.session, &id, &body)?;
            log::warn!(target: "runtime", "job {id} was still running from before this process started; marked failed ({RESTART_JOB_ERROR})");
            n += 1;
        }
        if n > 0 {
            self.event(
                Level::Warn,
                "jobs_recovered",
                format!("{n} job(s) interrupted by a gateway restart were marked failed"),
                json!({ "count": n }),
            );
        }
        Ok(())
    }

    fn heartbeat_body(&self, status: &str) -> Value {
        let install_fc = install_full_control(&self.settings.paths.config_path);
        json!({
            "status": status,
            "capabilities": capabilities(
                self.providers.capabilities_providers(),
                Some(self.providers.model_execution_ready()),
                &self.device_name,
                install_fc
            ),
            "device_name": self.device_name,
        })
    }

    fn send_heartbeat(&self, status: &'static str) -> bool {
        self.send_heartbeat_within(status, functions::HEARTBEAT_TIMEOUT)
    }

    /// The shutdown heartbeats: 20 s normally, 5 s when the last one already failed (a
    /// backend that is away must not push the stop past a service manager's stop timeout).
    fn send_shutdown_heartbeat(&self, status: &'static str) -> bool {
        let t = if lock(&self.heartbeat_error).is_some() {
            Duration::from_secs(5)
        } else {
            functions::HEARTBEAT_TIMEOUT
        };
        self.send_heartbeat_within(status, t)
    }

    fn send_heartbeat_within(&self, status: &'static str, timeout: Duration) -> bool {
        let _in_flight = lock(&self.heartbeat_in_flight);
        *lock(&self.heartbeat_sent) = Some(status);
        let body = self.heartbeat_body(status);
        let r = functions::invoke(&self.session, "gateway-heartbeat", &body, timeout);
        let ok = match &r {
            Ok(v) if v.get("success") == Some(&Value::Bool(true)) => true,
            Ok(_) => {
                log::warn!(target: "heartbeat", "gateway heartbeat returned an unexpected reply");
                false
            }
            Err(e) => {
                // Once per outage as a warning (and every 10 minutes while it lasts).
                let mut last = lock(&self.heartbeat_fail_logged);
                if last.is_none_or_elapsed(Duration::from_secs(600)) {
                    log::warn!(target: "heartbeat", "failed to send the gateway heartbeat status={status}: {e}; retrying every {} s", self.tuning.heartbeat.as_secs().max(1));
                    *last = Some(Instant::now());
                } else {
                    log::debug!(target: "heartbeat", "heartbeat still failing status={status}: {e}");
                }
                false
            }
        };
        if ok && lock(&self.heartbeat_fail_logged).take().is_some() {
            log::info!(target: "heartbeat", "heartbeats accepted again status={status}");
        }
        if ok {
            *lock(&self.heartbeat_ok_at) = Some(Instant::now());
            *lock(&self.heartbeat_error) = None;
        } else {
            *lock(&self.heartbeat_error) = Some(match &r {
                Err(e) => crate::backend::truncate_chars(&e.to_string(), 300),
                Ok(_) => "the backend's reply was not {\"success\": true}".into(),
            });
        }
        // `last_heartbeat_at` is the last one the backend took (status judges staleness by it).
        let at = now_rfc3339();
        (self.status)(&|s: &mut RuntimeStatus| {
            if ok {
                s.last_heartbeat_at = Some(at.clone());
            }
            s.last_heartbeat_ok = Some(ok);
        });
        if ok {
            log::debug!(target: "heartbeat", "heartbeat sent status={status}");
        }
        self.push_status(true);
        ok
    }

    fn send_events(&self) {
        for ev in self.providers.take_events() {
            let level = match ev.get("level").and_then(Value::as_str) {
                Some("error") => Level::Error,
                Some("info") => Level::Info,
                _ => Level::Warn,
            };
            let mut q = lock(&self.events);
            if q.len() < 100 {
                q.push_back(GatewayEvent {
                    level,
                    code: ev.get("code").and_then(Value::as_str).map(str::to_string),
                    provider: ev
                        .get("provider")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    message: ev
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    details: ev.get("details").cloned().unwrap_or(json!({})),
                });
            }
        }
        // After a transient failure, wait a while before trying again (no retry storm when
        // many wake-ups arrive while the backend is away).
        if lock(&self.events_retry_at).is_some_and(|t| Instant::now() < t) {
            return;
        }
        loop {
            let Some(ev) = lock(&self.events).pop_front() else {
                return;
            };
            match wire::insert_event(&self.session, &ev) {
                Ok(()) => *lock(&self.events_retry_at) = None,
                Err(e) if e.is_retryable() => {
                    let first = lock(&self.events_retry_at).is_none();
                    if first {
                        log::warn!(target: "events", "could not record gateway event {:?}: {e}; will retry", ev.code);
                    }
                    *lock(&self.events_retry_at) = Some(Instant::now() + Duration::from_secs(30));
                    lock(&self.events).push_front(ev);
                    return;
                }
                Err(e) => {
                    log::warn!(target: "events", "the backend refused gateway event {:?}: {e}; dropped", ev.code)
                }
            }
        }
    }
}

/// Persists provider health changes into gateway.json (`providerHealth`).
pub fn health_sink(settings: &Settings) -> crate::providers::HealthSink {
    let path = settings.paths.config_path.clone();
    Arc::new(move |id: &str, h: &crate::providers::health::Health| {
        let (id, v) = (id.to_string(), h.to_json());
        let r = crate::config::state::update(&path, move |s: &mut GatewayState| {
            s.provider_health
                .get_or_insert_with(Default::default)
                .insert(id, v);
        });
        if let Err(e) = r {
            log::warn!(target: "providers", "cannot save provider health to gateway.json: {e}");
        }
    })
}

/// The host name (device name default).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "gateway".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let s = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if s.is_empty() {
        "gateway".into()
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Time helpers

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn instant_to_rfc3339(t: Instant) -> String {
    let ago = t.elapsed();
    crate::util::rfc3339_millis(SystemTime::now() - ago)
}

// ---------------------------------------------------------------------------------------------
// Threads

struct Hooks {
    shared: Arc<Shared>,
}

impl ReaderHooks for Hooks {
    fn stop(&self) -> bool {
        self.shared.shutdown.is_draining()
    }
    fn wait(&self, d: Duration) -> bool {
        self.shared.shutdown.sleep(d)
    }
    fn subscribed(&self) {
        let s = &self.shared;
        let was_down = lock(&s.down_since).take();
        s.realtime_up.store(true, Ordering::SeqCst);
        *lock(&s.realtime_detail) = None;
        let _ = s.reconcile_wake.try_send(());
        if let Some(since) = was_down {
            let mut last = lock(&s.last_reconnect_event);
            if !last.is_some_and(|t| t.elapsed() <= Duration::from_secs(60)) {
                *last = Some(Instant::now());
                s.event(
                    Level::Info,
                    "realtime_reconnected",
                    format!(
                        "Realtime job channel reconnected after {} ms",
                        since.elapsed().as_millis()
                    ),
                    json!({ "down_ms": since.elapsed().as_millis() as u64 }),
                );
            }
        }
        s.push_status(true);
    }
    fn record(&self, record: Value) {
        // The binding is team-wide: another gateway's rows are none of our business, even
        // malformed ones.
        if let Some(g) = record.get("gateway_id").and_then(Value::as_str) {
            if g != self.shared.session.gateway_id {
                return;
            }
        }
        match wire::decode_job(&record) {
            Ok(job) => self.shared.offer(job),
            Err(why) => {
                let id = record.get("id").and_then(Value::as_str);
                self.shared.log_malformed(id, &why, "realtime");
            }
        }
    }
    fn malformed(&self, what: &str) {
        log::warn!(target: "realtime", "{what}");
    }
    fn disconnected(&self, reason: &str, retry_in: Duration) {
        let s = &self.shared;
        s.realtime_up.store(false, Ordering::SeqCst);
        lock(&s.down_since).get_or_insert_with(Instant::now);
        *lock(&s.realtime_detail) = Some(format!("realtime: {reason}"));
        log::warn!(target: "realtime", "realtime channel down: {reason}; reconnecting in {} ms (jobs are still picked up by polling)", retry_in.as_millis());
        s.push_status(true);
    }
}

fn spawn<F: FnOnce() + Send + 'static>(name: &str, f: F) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| format!("cannot start the {name} thread: {e}"))
}

fn reconcile_loop(s: Arc<Shared>, wake: Receiver<()>) {
    let mut limit = wire::RECONCILE_LIMIT;
    let mut startup_done = false;
    let mut last_error_log: Option<Instant> = None;
    loop {
        if s.shutdown.is_draining() {
            return;
        }
        if !lock(&s.pending).is_empty() {
            s.retry_pending();
        }
        if !startup_done {
            // Spooled results first (they win over recovery), then crash recovery.
            s.flush_spool();
            match s.recover_stale_jobs() {
                Ok(()) => startup_done = true,
                Err(e) => {
                    log::warn!(target: "runtime", "crash recovery check failed, retrying: {e}")
                }
            }
        } else if s.spool.len() > 0 {
            s.flush_spool();
        }
        let before = *lock(&s.ingress);
        match wire::reconcile(&s.session, limit) {
            Ok((jobs, bad)) => {
                // The whole backlog fit: back to the full page size.
                if jobs.len() + bad.len() < limit && limit < wire::RECONCILE_LIMIT {
                    log::info!(target: "ingress", "queued jobs fit in one reconcile again; page size back to {}", wire::RECONCILE_LIMIT);
                    limit = wire::RECONCILE_LIMIT;
                }
                *lock(&s.last_reconcile_ok) = Some(Instant::now());
                // The backend answers again: queued events may go now.
                if lock(&s.events_retry_at).take().is_some() {
                    let _ = s.heartbeat_wake.try_send(());
                }
                *lock(&s.ingress) = Ingress::Ok;
                *lock(&s.reconcile_error) = None;
                for (id, why) in bad {
                    s.log_malformed(id.as_deref(), &why, "reconcile");
                }
                for j in jobs {
                    s.offer(j);
                }
            }
            // Big rows (long prompts) can make a page exceed the body limit: fetch fewer at
            // once right away, or the backlog would never be seen.
            Err(Error::TooLarge { .. }) if limit > 1 => {
                limit = (limit / 4).max(1);
                log::warn!(target: "ingress", "queued jobs are too large for one reconcile reply; fetching {limit} at a time");
                continue;
            }
            Err(e) => {
                *lock(&s.ingress) = Ingress::Failing;
                *lock(&s.reconcile_error) =
                    Some(crate::backend::truncate_chars(&e.to_string(), 300));
                if !last_error_log.is_some_and(|t| t.elapsed() <= Duration::from_secs(30)) {
                    log::warn!(target: "ingress", "reconcile of queued jobs failed: {e}");
                    last_error_log = Some(Instant::now());
                }
            }
        }
        if *lock(&s.ingress) != before
            || before == Ingress::Pending
            || *lock(&s.heartbeat_sent) != Some(s.heartbeat_status())
        {
            let _ = s.heartbeat_wake.try_send(());
        }
        s.push_status(true);
        match wake.recv_timeout(s.tuning.reconcile) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if s.shutdown.sleep(s.tuning.reconcile) {
                    return;
                }
            }
        }
    }
}

fn heartbeat_loop(s: Arc<Shared>, wake: Receiver<()>) {
    let mut last_health = s.providers.health_generation();
    let mut next_tick = Instant::now();
    loop {
        if s.shutdown.is_draining() {
            return;
        }
        let status = s.heartbeat_status();
        let now = Instant::now();
        let health = s.providers.health_generation();
        if now >= next_tick {
            // Light check: carries the last status forward, re-reads availability.
            s.providers
                .check_health(crate::providers::health::Mode::Light, None);
        }
        let forced = s.force_heartbeat.swap(false, Ordering::SeqCst);
        let last_sent = *lock(&s.heartbeat_sent);
        if now >= next_tick || last_sent != Some(status) || health != last_health || forced {
            last_health = s.providers.health_generation();
            // A failed send is retried at the next tick, not in a loop.
            s.send_heartbeat(status);
            next_tick = Instant::now() + s.tuning.heartbeat;
            if let Ok(Some(cs)) = wire::control_state(&s.session) {
                let team_fc = cs.get("full_control_enabled") == Some(&Value::Bool(true));
                s.team_full_control.store(team_fc, Ordering::SeqCst);
                (s.status)(&|st: &mut RuntimeStatus| st.team_full_control = Some(team_fc));
                // A toggle turned off ends the open shell sessions now, not at the next job.
                crate::jobs::shell::enforce_control(true, s.control_source()());
            }
        }
        s.send_events();
        s.push_status(false);
        let mut wait = next_tick.saturating_duration_since(Instant::now());
        // `ready` turns into `error` when the last reconcile gets too old, even if the
        // reconcile thread is stuck in a slow request: wake up then.
        if let Some(t) = *lock(&s.last_reconcile_ok) {
            let stale_in =
                (s.tuning.reconcile * 3 + Duration::from_millis(10)).saturating_sub(t.elapsed());
            if !stale_in.is_zero() {
                wait = wait.min(stale_in);
            }
        }
        // Woken early by status changes, new events and the drain.
        match wake.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if s.shutdown.sleep(wait) {
                    return;
                }
            }
        }
    }
}

/// Blocks on the job channel (no idle wake-ups); `stop` disconnects at the drain.
fn worker_loop(s: Arc<Shared>, rx: Receiver<Box<JobRow>>, stop: Receiver<()>) {
    loop {
        crossbeam_channel::select! {
            recv(rx) -> job => match job {
                Ok(job) => {
                    let id = job.id.clone();
                    if s.accepting.load(Ordering::SeqCst) {
                        // The handler is already guarded; this keeps the worker alive if the
                        // wire code around it panics too.
                        let r = std::panic::catch_unwind(AssertUnwindSafe(|| s.process(*job)));
                        if r.is_err() {
                            log::error!(target: "worker", "processing job {id} panicked; the worker continues");
                            lock(&s.running).remove(&id);
                        }
                    }
                    lock(&s.seen).remove(&id);
                    // The job's output and result are freed by now: hand the pages back.
                    crate::daemon::memory::give_back();
                }
                Err(_) => return,
            },
            recv(stop) -> _ => return,
        }
    }
}

/// Waits up to `d` for a thread to finish; leaves it detached otherwise.
fn join_within(h: JoinHandle<()>, d: Duration, what: &str) {
    let deadline = Instant::now() + d;
    while !h.is_finished() {
        if Instant::now() >= deadline {
            log::warn!(target: "runtime", "{what} did not stop within {} ms; leaving it", d.as_millis());
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = h.join();
}

// ---------------------------------------------------------------------------------------------
// run

/// Runs until `ctx.shutdown` asks to stop and every thread has wound down. Returns Err with a
/// human sentence when the runtime cannot start at all (for example not paired).
pub fn run(ctx: RuntimeContext) -> Result<(), String> {
    let process_start_ms = unix_ms();
    let settings = ctx.settings.clone();
    let state = crate::config::state::load(&settings.paths.config_path)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let (Some(gateway_id), Some(team_id), Some(access), Some(refresh)) = (
        state.gateway_id.clone().filter(|s| !s.is_empty()),
        state.team_id.clone().filter(|s| !s.is_empty()),
        state.access_token.clone().filter(|s| !s.is_empty()),
        state.refresh_token.clone().filter(|s| !s.is_empty()),
    ) else {
        return Err(format!(
            "This gateway is not paired yet ({} has no session). Run `panorama-gateway pair <CODE>` first.",
            settings.paths.config_path.display()
        ));
    };
    let cfg: BackendConfig = crate::config::backend_config(&settings, Some(&state))?;
    let tuning = Tuning::from_env();
    let device_name = settings
        .device_name
        .clone()
        .or(state.device_name.clone())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(hostname);
    // Like the reference's start (backend.md §16), gateway.json keeps the name in use.
    if state.device_name.as_deref() != Some(device_name.as_str()) {
        let name = device_name.clone();
        if let Err(e) = crate::config::state::update(&settings.paths.config_path, move |s| {
            s.device_name = Some(name)
        }) {
            log::warn!(target: "runtime", "cannot save the device name to gateway.json: {e}");
        }
    }
    let session = Arc::new(Session::new(
        crate::backend::new_agent(),
        &cfg,
        &gateway_id,
        &team_id,
        &access,
        &refresh,
        Box::new(FileTokenStore {
            settings: settings.clone(),
            gateway_id: gateway_id.clone(),
        }),
    ));
    let spool = Spool::open(&settings.paths.spool_dir)?;
    log::info!(target: "runtime", "gateway starting gateway_id={gateway_id} team_id={team_id} device={device_name:?} concurrency={} backend={}", tuning.concurrency, cfg.url);
    (ctx.status)(&|s: &mut RuntimeStatus| s.connection = "connecting".into());

    // Session bootstrap: a refused refresh token is reported, not fatal (retried slowly).
    if let Err(e) = session.access_token() {
        log::warn!(target: "session", "session check at start failed: {e}");
    }

    let providers = Arc::new(Registry::discover(&settings.cli_overrides));
    providers.set_work_root(settings.paths.config_dir.join("work"));
    if let Some(h) = &state.provider_health {
        providers.load_health(h);
    }
    providers.set_health_sink(health_sink(&settings));
    let children = Arc::new(Children::default());
    let (queue_tx, queue_rx) = bounded::<Box<JobRow>>(tuning.queue_capacity);
    let (rec_tx, rec_rx) = bounded::<()>(4);
    let (hb_tx, hb_rx) = bounded::<()>(16);
    let shared = Arc::new(Shared {
        session: session.clone(),
        shutdown: ctx.shutdown.clone(),
        status: ctx.status.clone(),
        tuning: tuning.clone(),
        providers,
        children: children.clone(),
        spool,
        device_name: device_name.clone(),
        settings: settings.clone(),
        process_start_ms,
        accepting: AtomicBool::new(true),
        team_full_control: AtomicBool::new(false),
        seen: Mutex::new(HashSet::new()),
        running: Arc::new(Mutex::new(HashMap::new())),
        queue: queue_tx,
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        realtime_up: AtomicBool::new(false),
        realtime_detail: Mutex::new(None),
        last_reconcile_ok: Mutex::new(None),
        ingress: Mutex::new(Ingress::Pending),
        reconcile_wake: rec_tx,
        heartbeat_wake: hb_tx,
        events: Mutex::new(VecDeque::new()),
        force_heartbeat: AtomicBool::new(false),
        heartbeat_fail_logged: Mutex::new(None),
        events_retry_at: Mutex::new(None),
        malformed_logged: Mutex::new(HashSet::new()),
        last_status_push: Mutex::new(None),
        last_reconnect_event: Mutex::new(None),
        down_since: Mutex::new(None),
        heartbeat_in_flight: Mutex::new(()),
        heartbeat_sent: Mutex::new(None),
        heartbeat_ok_at: Mutex::new(None),
        heartbeat_error: Mutex::new(None),
        reconcile_error: Mutex::new(None),
        pending: Mutex::new(VecDeque::new()),
    });
    shared.event(
        Level::Info,
        "gateway_started",
        format!(
            "Gateway {} started on {device_name} (concurrency {})",
            env!("CARGO_PKG_VERSION"),
            tuning.concurrency
        ),
        json!({ "version": env!("CARGO_PKG_VERSION"), "concurrency": tuning.concurrency, "pid": std::process::id() }),
    );

    let hb = {
        let s = shared.clone();
        spawn("heartbeat", move || heartbeat_loop(s, hb_rx))?
    };
    // Provider validation (a real model call only when a provider never had a full check)
    // runs beside the runtime: it can take 30 s and must not delay job ingress.
    {
        let s = shared.clone();
        spawn("provider-check", move || {
            s.providers
                .check_health(crate::providers::health::Mode::Auto, Some("startup"));
            let _ = s.heartbeat_wake.try_send(());
        })?;
    }
    let (workers_stop_tx, workers_stop_rx) = bounded::<()>(0);
    let mut workers = Vec::new();
    for i in 0..tuning.concurrency {
        let s = shared.clone();
        let rx = queue_rx.clone();
        let stop = workers_stop_rx.clone();
        workers.push(spawn(&format!("worker-{i}"), move || {
            worker_loop(s, rx, stop)
        })?);
    }
    drop(queue_rx);
    let rec = {
        let s = shared.clone();
        spawn("reconcile", move || reconcile_loop(s, rec_rx))?
    };
    let reader = {
        let s = shared.clone();
        spawn("realtime", move || {
            let hooks = Hooks { shared: s.clone() };
            realtime::run_reader(&s.session, &ReaderConfig::from_env(), &hooks);
        })?
    };
    log::info!(target: "runtime", "gateway running");

    // Watch the session state for the status file while waiting for the stop request.
    let mut last_reauth = None;
    let mut reload_seen = crate::daemon::reload_generation();
    while !ctx.shutdown.sleep(Duration::from_secs(1)) {
        let reload = crate::daemon::reload_generation();
        if reload != reload_seen {
            // SIGHUP: gateway.json was re-read (full-control toggle); tell the backend now.
            reload_seen = reload;
            shared.force_heartbeat.store(true, Ordering::SeqCst);
            let _ = shared.heartbeat_wake.try_send(());
        }
        let r = session.reauth_reason();
        if r != last_reauth {
            if r.is_some() {
                shared.event(
                    Level::Error,
                    "reauth_required",
                    "The backend refused the gateway's refresh token; the gateway must be paired again".into(),
                    json!({}),
                );
            }
            last_reauth = r;
            shared.push_status(true);
            let _ = shared.heartbeat_wake.try_send(());
        }
    }

    // ----- drain -----
    let drain_start = Instant::now();
    shared.accepting.store(false, Ordering::SeqCst);
    log::info!(target: "runtime", "gateway shutting down mode=drain in_flight={} drain_timeout_ms={}", lock(&shared.running).len(), tuning.drain_timeout.as_millis());
    shared.push_status(true);
    let _ = shared.reconcile_wake.try_send(());
    let _ = shared.heartbeat_wake.try_send(());
    join_within(reader, Duration::from_secs(3), "the realtime thread");
    join_within(rec, Duration::from_secs(20), "the reconcile thread");
    join_within(hb, Duration::from_secs(25), "the heartbeat thread");
    // One status-change heartbeat (pending) while draining: the gateway stops taking jobs.
    shared.send_shutdown_heartbeat("pending");
    let mut next_log = Instant::now();
    loop {
        let n = lock(&shared.running).len();
        if n == 0 {
            break;
        }
        if ctx.shutdown.is_immediate() || drain_start.elapsed() >= tuning.drain_timeout {
            break;
        }
        if Instant::now() >= next_log {
            let left = tuning.drain_timeout.saturating_sub(drain_start.elapsed());
            log::info!(target: "runtime", "waiting for {n} job(s) to finish; they are stopped in {} s", left.as_secs());
            next_log = Instant::now() + Duration::from_secs(5);
        }
        ctx.shutdown.wait_for(
            crate::daemon::shutdown::Level::Immediate,
            Duration::from_millis(100),
        );
    }
    let left: Vec<(String, String)> = lock(&shared.running)
        .iter()
        .map(|(id, r)| (id.clone(), r.job_type.clone()))
        .collect();
    if !left.is_empty() {
        log::warn!(target: "runtime", "drain over ({}), stopping {} running job(s)", if drain_start.elapsed() >= tuning.drain_timeout { "timeout" } else { "stop requested now" }, left.len());
        ctx.shutdown.request_immediate();
        for r in lock(&shared.running).values() {
            r.cancel.cancel();
        }
        children.kill_all(Duration::from_secs(2));
        // Give the workers a moment to complete the stopped jobs themselves.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lock(&shared.running).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let stuck: Vec<(String, String)> = lock(&shared.running)
            .iter()
            .map(|(id, r)| (id.clone(), r.job_type.clone()))
            .collect();
        let mut backend_away = false;
        for (id, jt) in stuck {
            log::warn!(target: "runtime", "job {id} did not stop; marking it failed");
            let body = wire::completion_body(
                "failed",
                &Some(json!({ "message": SHUTDOWN_JOB_ERROR, "job_type": jt })),
                &Some(SHUTDOWN_JOB_ERROR.into()),
                &now_rfc3339(),
            );
            // Once the backend failed to answer, spool the rest at once: each try could take
            // a whole request timeout.
            let sent = !backend_away
                && {
                    match wire::complete(&shared.session, &id, &body) {
                        Ok(()) => true,
                        Err(e) => {
                            log::warn!(target: "runtime", "could not mark job {id} failed ({e}); spooling it for the next start");
                            backend_away = true;
                            false
                        }
                    }
                };
            if !sent {
                if let Err(e) = shared.spool.put(&id, &body) {
                    shared.hold_pending(&id, &body, &e);
                }
            }
        }
    }
    drop(workers_stop_tx);
    for w in workers {
        join_within(w, Duration::from_secs(2), "a worker thread");
    }
    // Last chance for results held in memory: deliver or spool them, else say loudly what is
    // lost (the next start fails those jobs).
    if shared.retry_pending() > 0 {
        for (id, _) in lock(&shared.pending).iter() {
            log::error!(target: "runtime", "LOST RESULT of job {id}: the backend did not take it and the spool {} is unwritable; the next start fails the job ({RESTART_JOB_ERROR})", shared.spool.dir().display());
        }
    }
    // Remote shell sessions outlive single jobs: end them (process groups killed) before the
    // process exits or re-executes itself for an upgrade.
    crate::jobs::shell::close_all_sessions(Duration::from_secs(5));
    shared.event(
        Level::Info,
        "gateway_stopped",
        "Gateway stopped".into(),
        json!({ "drain_ms": drain_start.elapsed().as_millis() as u64 }),
    );
    shared.send_events();
    shared.send_shutdown_heartbeat("offline");
    (ctx.status)(&|s: &mut RuntimeStatus| s.connection = "stopped".into());
    shared.push_status(true);
    (ctx.status)(&|s: &mut RuntimeStatus| s.connection = "stopped".into());
    log::info!(target: "runtime", "gateway stopped");
    Ok(())
}
