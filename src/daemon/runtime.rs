//! The runtime: wires the daemon's threads together and runs the drain. Called by `start` once
//! the pid lock is held, logging is set up and signals are routed into `ctx.shutdown`.
//!
//! Data flows one way: ingress (realtime reader + reconcile, `ingress.rs`) → bounded channel
//! (dedup by job id) → workers (claim → handler → complete, `worker.rs`) → the outbox
//! (delivery, spool, held results, crash recovery, `outbox.rs`) → backend. The heartbeat
//! thread (`heartbeat.rs`) reports status and sends events. `subagent_cancel` jobs bypass the
//! channel. What the threads share is in `shared.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError};
use serde_json::json;

use super::heartbeat::{self, heartbeat_loop};
use super::ingress::{reconcile_loop, Hooks};
use super::outbox::{self, Outbox};
use super::shared::{Channels, Parts, Shared};
use super::status::RuntimeStatus;
use super::worker::worker_loop;
use crate::backend::jobs::{JobRow, Level};
use crate::backend::realtime::{self, ReaderConfig};
use crate::backend::session::Session;
use crate::backend::spool::Spool;
use crate::config::state::GatewayState;
use crate::config::{BackendConfig, Settings};
use crate::exec::Children;
use crate::jobs::journal::Journal;
use crate::jobs::recovery;
use crate::jobs::shell::ShellSessions;
use crate::providers::{Registry, Stage};
use crate::shutdown::Shutdown;
use crate::state_store::{health_sink, FileTokenStore};
use crate::tuning::Tuning;
use crate::util::hostname;

/// Edits the daemon's status; the closure changes the current status and the file is rewritten
/// atomically. Provided by the daemon.
pub type StatusUpdater = Arc<dyn Fn(&dyn Fn(&mut RuntimeStatus)) + Send + Sync>;

/// What `start` hands to the runtime.
pub struct RuntimeContext {
    pub settings: Settings,
    pub shutdown: Shutdown,
    pub status: StatusUpdater,
    /// Increases on every SIGHUP (after the log was reopened and gateway.json re-read).
    pub reloads: Arc<AtomicU64>,
}

/// The error text of jobs stopped by the drain timeout.
pub const SHUTDOWN_JOB_ERROR: &str = "gateway shut down before the job finished";
/// The error text of jobs a previous process left `running` (set by crash recovery).
pub use crate::jobs::recovery::RESTART_JOB_ERROR;

/// The paired session from gateway.json, and the device name in use.
struct Paired {
    session: Arc<Session>,
    state: GatewayState,
    cfg: BackendConfig,
    device_name: String,
}

/// Reads the pairing from gateway.json (Err: a human sentence when not paired) and opens the
/// backend session; gateway.json keeps the device name in use, like the reference's start
/// (backend.md §16).
fn open_session(settings: &Settings) -> Result<Paired, String> {
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
    let cfg: BackendConfig = crate::config::backend_config(settings, Some(&state))?;
    let device_name = settings
        .device_name
        .clone()
        .or(state.device_name.clone())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(hostname);
    if state.device_name.as_deref() != Some(device_name.as_str()) {
        let name = device_name.clone();
        if let Err(e) = crate::config::state::update(&settings.paths.config_path, move |s| {
            s.device_name = Some(name)
        }) {
            log::warn!(target: "runtime", "cannot save the device name to gateway.json: {e}");
        }
    }
    let net = Arc::new(crate::backend::net::Net::from_env(
        settings.ca_file.as_deref(),
    )?);
    if let Some(p) = net.proxy_for(&cfg.url) {
        log::info!(target: "runtime", "backend calls and realtime go through the proxy {}", p.display());
    }
    let agent = net.agent_for(&cfg.url)?;
    let session = Arc::new(
        Session::new(
            agent,
            &cfg,
            &gateway_id,
            &team_id,
            &access,
            &refresh,
            Box::new(FileTokenStore::new(
                settings.paths.config_path.clone(),
                &gateway_id,
            )),
        )
        .with_net(net),
    );
    Ok(Paired {
        session,
        state,
        cfg,
        device_name,
    })
}

/// The providers of this host, with the health gateway.json remembers; not discovered yet
/// (that runs in the provider-check thread, off the start-up path).
fn open_providers(
    settings: &Settings,
    state: &GatewayState,
    wake_heartbeat: crossbeam_channel::Sender<()>,
) -> Arc<Registry> {
    let providers = Arc::new(Registry::undiscovered());
    providers.set_work_root(settings.paths.config_dir.join("work"));
    if let Some(h) = &state.provider_health {
        providers.load_health(h);
    }
    providers.set_health_sink(heartbeat::waking_sink(
        health_sink(settings.paths.config_path.clone()),
        wake_heartbeat,
    ));
    providers
}

/// The running threads, for the drain.
struct Threads {
    reader: Thread,
    /// Wakes the reader out of its blocking read.
    reader_interrupt: realtime::Interrupt,
    reconcile: Thread,
    heartbeat: Thread,
    workers: Vec<Thread>,
    /// Discovery and the start-up health check (joined, bounded, so their probes' private
    /// temporary directories are removed before the process exits).
    provider_check: Thread,
    /// Dropped at the drain: the workers stop waiting for jobs.
    stop_workers: crossbeam_channel::Sender<()>,
}

/// Runs until `ctx.shutdown` asks to stop and every thread has wound down. Returns Err with a
/// human sentence when the runtime cannot start at all (for example not paired).
pub fn run(ctx: RuntimeContext) -> Result<(), String> {
    let settings = ctx.settings.clone();
    let paired = open_session(&settings)?;
    let session = paired.session.clone();
    let tuning = Tuning::from_env();
    let device_name = paired.device_name.clone();
    let spool = Spool::open(&settings.paths.spool_dir)?;
    // Before anything runs: the process groups a crashed predecessor left are ended now; its
    // jobs are settled with the backend by the reconcile loop before it takes any.
    let journal = Arc::new(Journal::open(&settings.paths.inflight_dir));
    let (recovery, journal_problems) = recovery::begin(&journal, crate::exec::KILL_GRACE);
    let children = Arc::new(Children::default());
    children.set_observer(journal.observer());
    log::info!(target: "runtime", "gateway starting gateway_id={} team_id={} device={device_name:?} concurrency={} backend={}", session.gateway_id, session.team_id, tuning.concurrency, paired.cfg.url);
    (ctx.status)(&|s: &mut RuntimeStatus| s.connection = "connecting".into());

    // Session bootstrap: a refused refresh token is reported, not fatal (retried slowly).
    if let Err(e) = session.access_token() {
        log::warn!(target: "session", "session check at start failed: {e}");
    }

    // The opt-in health/metrics endpoint: bound before anything runs, so a busy port fails
    // the start with a clear message instead of a silent gap in monitoring.
    let metrics_listener = bind_metrics(&settings, &ctx.status)?;
    let (to_workers, workers_from_ingress) = bounded::<Box<JobRow>>(tuning.queue_capacity);
    let (to_cancels, cancels_from_ingress) = bounded::<Box<JobRow>>(super::cancels::QUEUE);
    let (wake_reconcile, reconcile_woken) = bounded::<()>(4);
    let (wake_heartbeat, heartbeat_woken) = bounded::<()>(16);
    let shared = Arc::new(Shared::new(
        Parts {
            session: session.clone(),
            shutdown: ctx.shutdown.clone(),
            status: ctx.status.clone(),
            tuning: tuning.clone(),
            providers: open_providers(&settings, &paired.state, wake_heartbeat.clone()),
            children,
            shell_sessions: Arc::new(ShellSessions::new()),
            subagent_runs: Arc::default(),
            outbox: Outbox::new(spool),
            device_name: device_name.clone(),
            settings,
            journal,
            recovery,
        },
        Channels {
            to_workers,
            to_cancels,
            wake_reconcile,
            wake_heartbeat,
        },
    ));
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
    for p in journal_problems {
        shared.event(
            Level::Error,
            "journal_unreadable",
            "An in-flight journal entry of the previous gateway process could not be read; it was set aside and not recovered".into(),
            json!({ "problem": p }),
        );
    }

    if let Some(listener) = metrics_listener {
        let s = shared.clone();
        let started = std::time::Instant::now();
        spawn("metrics", move || {
            super::health::serve(s, listener, started)
        })?;
    }
    let s = shared.clone();
    let heartbeat = spawn("heartbeat", move || heartbeat_loop(s, heartbeat_woken))?;
    // Discovery (a few `--version`/`--help` runs per CLI; gemini's take seconds) and
    // validation (a real model call only when a provider never had a full check) run beside
    // the runtime: neither delays the first heartbeat or job ingress. Handlers that need a
    // CLI wait for the discovery.
    let provider_check = spawn_provider_check(&shared)?;
    let (stop_workers, workers_stopped) = bounded::<()>(0);
    let mut workers = Vec::new();
    for i in 0..tuning.concurrency {
        let s = shared.clone();
        let (rx, stop) = (workers_from_ingress.clone(), workers_stopped.clone());
        workers.push(spawn(&format!("worker-{i}"), move || {
            worker_loop(s, rx, stop)
        })?);
    }
    drop(workers_from_ingress);
    // A small fixed pool for cancel jobs, stopped with the workers.
    for i in 0..super::cancels::THREADS {
        let s = shared.clone();
        let (rx, stop) = (cancels_from_ingress.clone(), workers_stopped.clone());
        workers.push(spawn(&format!("cancel-{i}"), move || {
            super::cancels::cancel_loop(s, rx, stop)
        })?);
    }
    let s = shared.clone();
    let reconcile = spawn("reconcile", move || reconcile_loop(s, reconcile_woken))?;
    let s = shared.clone();
    let reader_config = ReaderConfig::from_env();
    let reader_interrupt = reader_config.interrupt.clone();
    let reader = spawn("realtime", move || {
        let hooks = Hooks { shared: s.clone() };
        realtime::run_reader(&s.session, &reader_config, &hooks);
    })?;
    log::info!(target: "runtime", "gateway running");

    watch_until_stop(&shared, &ctx.reloads);
    drain(
        &shared,
        Threads {
            reader,
            reader_interrupt,
            reconcile,
            heartbeat,
            workers,
            provider_check,
            stop_workers,
        },
    );
    log::info!(target: "runtime", "gateway stopped");
    Ok(())
}

/// Binds the opt-in health/metrics listener (`--metrics-addr`); None when not asked for.
fn bind_metrics(
    settings: &Settings,
    status: &StatusUpdater,
) -> Result<Option<std::net::TcpListener>, String> {
    Ok(match &settings.metrics_addr {
        Some(a) => {
            let listener = super::health::parse_addr(a).and_then(super::health::bind)?;
            let addr = listener
                .local_addr()
                .map_err(|e| format!("metrics listener: {e}"))?;
            log::info!(target: "metrics", "health and metrics on http://{addr}/metrics (/healthz, /readyz)");
            if !addr.ip().is_loopback() {
                log::warn!(target: "metrics", "the metrics endpoint listens on {addr}, beyond this host: it shows job counts and provider health to anyone who can reach it");
            }
            (status)(&|s: &mut RuntimeStatus| s.metrics_addr = Some(addr.to_string()));
            Some(listener)
        }
        None => None,
    })
}

/// Discovery (a few `--version`/`--help` runs per CLI; gemini's take seconds) and validation
/// (a real model call only when a provider never had a full check) run beside the runtime:
/// neither delays the first heartbeat or job ingress. Handlers that need a CLI wait for the
/// discovery.
fn spawn_provider_check(shared: &Arc<Shared>) -> Result<Thread, String> {
    let s = shared.clone();
    spawn("provider-check", move || {
        // Whatever happens below, handlers waiting for the checks are let go.
        struct Release(Arc<Registry>);
        impl Drop for Release {
            fn drop(&mut self) {
                self.0.reached(Stage::Checked);
            }
        }
        let release = Release(s.providers.clone());
        s.providers.finish_discovery(&s.settings.cli_overrides);
        // The backend sees what was found before a handler that needs a CLI goes on: a
        // subagent run (queued before the start, say) checks the capabilities there.
        heartbeat::send_heartbeat(&s, s.heartbeat_status());
        s.providers.reached(Stage::Discovered);
        if s.shutdown.is_draining() {
            return; // no validation call for a gateway that is stopping
        }
        s.providers
            .check_health(crate::providers::health::Mode::Auto, Some("startup"));
        heartbeat::send_heartbeat(&s, s.heartbeat_status());
        drop(release);
        log::info!(target: "providers", "provider checks at start done");
    })
}

/// Watches the session state (and SIGHUP reloads) for the status file while waiting for the
/// stop request.
fn watch_until_stop(shared: &Shared, reloads: &AtomicU64) {
    let mut last_reauth = None;
    let mut reload_seen = reloads.load(Ordering::SeqCst);
    while !shared.shutdown.sleep(Duration::from_secs(1)) {
        let reload = reloads.load(Ordering::SeqCst);
        if reload != reload_seen {
            // SIGHUP: gateway.json was re-read (full-control toggle); tell the backend now.
            reload_seen = reload;
            // Host machine control switched off ends the shell sessions now, without waiting
            // for the backend.
            let c = shared.control_source()();
            shared.shell_sessions.enforce_control(c);
            shared.heartbeat.force.store(true, Ordering::SeqCst);
            shared.wake_heartbeat();
        }
        let r = shared.session.reauth_reason();
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
            shared.wake_heartbeat();
        }
    }
}

/// The drain: stop ingress, send a `pending` heartbeat, wait for in-flight jobs up to the
/// drain timeout (or an immediate stop), stop and fail the rest, give held results a last
/// chance, end the shell sessions, then the `offline` heartbeat.
fn drain(shared: &Shared, threads: Threads) {
    let drain_start = Instant::now();
    let tuning = &shared.tuning;
    shared.accepting.store(false, Ordering::SeqCst);
    log::info!(target: "runtime", "gateway shutting down mode=drain in_flight={} drain_timeout_ms={}", shared.jobs.len(), tuning.drain_timeout.as_millis());
    shared.push_status(true);
    // Every thread that blocks is woken now, none waits out a timeout.
    threads.reader_interrupt.fire();
    shared.providers.stop_checks();
    shared.wake_reconcile();
    shared.wake_heartbeat();
    join_within(
        threads.reader,
        Duration::from_secs(3),
        "the realtime thread",
    );
    join_within(
        threads.reconcile,
        Duration::from_secs(20),
        "the reconcile thread",
    );
    join_within(
        threads.heartbeat,
        Duration::from_secs(25),
        "the heartbeat thread",
    );
    // One status-change heartbeat (pending) while draining: the gateway stops taking jobs.
    // With nothing in flight the drain is over at once and `offline` follows right away.
    if !shared.jobs.is_empty() {
        heartbeat::send_shutdown_heartbeat(shared, "pending");
    }
    wait_for_jobs(shared, drain_start);
    let left = shared.jobs.list();
    if !left.is_empty() {
        log::warn!(target: "runtime", "drain over ({}), stopping {} running job(s)", if drain_start.elapsed() >= tuning.drain_timeout { "timeout" } else { "stop requested now" }, left.len());
        shared.shutdown.request_immediate();
        shared.jobs.cancel_all();
        shared.children.kill_all(Duration::from_secs(2));
        // Give the workers a moment to complete the stopped jobs themselves.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !shared.jobs.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        outbox::fail_stuck_jobs(shared, shared.jobs.list());
    }
    drop(threads.stop_workers);
    for w in threads.workers {
        join_within(w, Duration::from_secs(2), "a worker thread");
    }
    // A stop during start-up waits for discovery's probes (each bounded by its own timeout;
    // a validation call was stopped above), so none outlives the process with its files.
    if !threads.provider_check.handle.is_finished() {
        log::info!(target: "runtime", "waiting for the provider checks at start to finish");
    }
    join_within(
        threads.provider_check,
        Duration::from_secs(30),
        "the provider checks at start",
    );
    outbox::last_retry(shared);
    // Remote shell sessions outlive single jobs: end them (process groups killed) before the
    // process exits or re-executes itself for an upgrade.
    shared.shell_sessions.close_all(Duration::from_secs(5));
    shared.event(
        Level::Info,
        "gateway_stopped",
        "Gateway stopped".into(),
        json!({ "drain_ms": drain_start.elapsed().as_millis() as u64 }),
    );
    heartbeat::send_events(shared);
    heartbeat::send_shutdown_heartbeat(shared, "offline");
    shared.edit_status(&|s: &mut RuntimeStatus| s.connection = "stopped".into());
    shared.push_status(true);
    shared.edit_status(&|s: &mut RuntimeStatus| s.connection = "stopped".into());
}

/// Waits for the running jobs to finish, until the drain timeout or an immediate stop; says
/// every 5 s what it waits for.
fn wait_for_jobs(shared: &Shared, drain_start: Instant) {
    let timeout = shared.tuning.drain_timeout;
    let mut next_log = Instant::now();
    loop {
        let n = shared.jobs.len();
        if n == 0 {
            break;
        }
        if shared.shutdown.is_immediate() || drain_start.elapsed() >= timeout {
            break;
        }
        if Instant::now() >= next_log {
            let left = timeout.saturating_sub(drain_start.elapsed());
            log::info!(target: "runtime", "waiting for {n} job(s) to finish; they are stopped in {} s", left.as_secs());
            next_log = Instant::now() + Duration::from_secs(5);
        }
        // Woken by an immediate stop and by every job that finishes (Shutdown::poke).
        let wait = timeout
            .saturating_sub(drain_start.elapsed())
            .min(next_log.saturating_duration_since(Instant::now()));
        shared
            .shutdown
            .wait_for(crate::shutdown::Level::Immediate, wait);
    }
}

/// A thread and the signal that it has finished (sent when its function returns or panics).
struct Thread {
    handle: JoinHandle<()>,
    done: crossbeam_channel::Receiver<()>,
}

fn spawn<F: FnOnce() + Send + 'static>(name: &str, f: F) -> Result<Thread, String> {
    let (tx, done) = bounded::<()>(1);
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // Dropped on return and on unwind alike: the receiver wakes either way.
            let _finished = tx;
            f()
        })
        .map_err(|e| format!("cannot start the {name} thread: {e}"))?;
    Ok(Thread { handle, done })
}

/// Waits up to `d` for a thread to finish (woken the moment it does); leaves it detached
/// otherwise.
fn join_within(t: Thread, d: Duration, what: &str) {
    if let Err(RecvTimeoutError::Timeout) = t.done.recv_timeout(d) {
        log::warn!(target: "runtime", "{what} did not stop within {} ms; leaving it", d.as_millis());
        return;
    }
    let _ = t.handle.join();
}
