//! What the runtime's threads share: the backend session, the providers, the shutdown token,
//! the channels between the threads (named by direction), one state object per thread
//! (ingress, heartbeat, outbox, running jobs), and the status file they all feed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::Value;

use super::cancels::CancelState;
use super::heartbeat::{EventQueue, HeartbeatState};
use super::ingress::{Ingress, IngressState};
use super::outbox::Outbox;
use super::runtime::StatusUpdater;
use super::status::RuntimeStatus;
use super::worker::RunningJobs;
use crate::backend::jobs::{GatewayEvent, JobRow, Level};
use crate::backend::session::Session;
use crate::config::Settings;
use crate::exec::Children;
use crate::jobs;
use crate::jobs::journal::Journal;
use crate::jobs::recovery;
use crate::jobs::shell::ShellSessions;
use crate::jobs::subagent::active::SubagentRuns;
use crate::providers::Registry;
use crate::shutdown::Shutdown;
use crate::tuning::Tuning;
use crate::util::{instant_to_rfc3339, lock};

/// `None`, or longer ago than `d`.
pub(super) trait ElapsedExt {
    fn is_none_or_elapsed(&self, d: Duration) -> bool;
}

impl ElapsedExt for Option<Instant> {
    fn is_none_or_elapsed(&self, d: Duration) -> bool {
        !self.is_some_and(|t| t.elapsed() < d)
    }
}

/// The channels' sending ends, named by where they lead.
pub(super) struct Channels {
    /// Ingress → workers. Boxed rows: the bounded channel preallocates its slots, keep them
    /// pointer-sized.
    pub to_workers: Sender<Box<JobRow>>,
    /// Ingress → the cancel threads (subagent_cancel jobs, bounded; see `cancels`).
    pub to_cancels: Sender<Box<JobRow>>,
    /// → the reconcile thread: reconcile now (after a subscribe, at the drain).
    pub wake_reconcile: Sender<()>,
    /// → the heartbeat thread: the status changed, an event is queued, the drain began.
    pub wake_heartbeat: Sender<()>,
}

/// The fixed parts the runtime hands to [`Shared::new`].
pub(super) struct Parts {
    pub session: Arc<Session>,
    pub shutdown: Shutdown,
    pub status: StatusUpdater,
    pub tuning: Tuning,
    pub providers: Arc<Registry>,
    pub children: Arc<Children>,
    pub shell_sessions: Arc<ShellSessions>,
    pub subagent_runs: Arc<SubagentRuns>,
    pub outbox: Outbox,
    pub device_name: String,
    pub settings: Settings,
    pub journal: Arc<Journal>,
    pub recovery: recovery::Pending,
}

pub(super) struct Shared {
    pub session: Arc<Session>,
    pub shutdown: Shutdown,
    pub tuning: Tuning,
    pub providers: Arc<Registry>,
    pub children: Arc<Children>,
    /// The open remote shell sessions (they outlive single jobs).
    pub shell_sessions: Arc<ShellSessions>,
    /// The subagent runs active here and the cancels waiting for theirs.
    pub subagent_runs: Arc<SubagentRuns>,
    /// The runs with a cancel job on its way (coalescing).
    pub cancels: CancelState,
    pub device_name: String,
    pub settings: Settings,
    /// The in-flight journal of this process (the next start's crash recovery reads it).
    pub journal: Arc<Journal>,
    /// What an earlier process left in the journal, still to settle with the backend.
    pub recovery: recovery::Pending,
    /// False once the drain began: new jobs are left queued for the next process.
    pub accepting: AtomicBool,
    pub channels: Channels,
    pub ingress: IngressState,
    pub heartbeat: HeartbeatState,
    pub events: EventQueue,
    pub outbox: Outbox,
    pub jobs: RunningJobs,
    /// Counters for `/metrics` (opt-in endpoint, daemon/health.rs).
    pub metrics: crate::metrics::Metrics,
    status: StatusUpdater,
    last_status_push: Mutex<Option<Instant>>,
}

impl Shared {
    pub fn new(p: Parts, channels: Channels) -> Shared {
        Shared {
            session: p.session,
            shutdown: p.shutdown,
            tuning: p.tuning,
            providers: p.providers,
            children: p.children,
            shell_sessions: p.shell_sessions,
            subagent_runs: p.subagent_runs,
            cancels: CancelState::default(),
            device_name: p.device_name,
            settings: p.settings,
            journal: p.journal,
            recovery: p.recovery,
            accepting: AtomicBool::new(true),
            channels,
            ingress: IngressState::default(),
            heartbeat: HeartbeatState::default(),
            events: EventQueue::default(),
            outbox: p.outbox,
            jobs: RunningJobs::default(),
            metrics: crate::metrics::Metrics::default(),
            status: p.status,
            last_status_push: Mutex::new(None),
        }
    }

    /// Edits the status file directly (fields the status push does not compute).
    pub fn edit_status(&self, f: &dyn Fn(&mut RuntimeStatus)) {
        (self.status)(f)
    }

    /// Queues a gateway_events row (bounded; the heartbeat thread sends it).
    pub fn event(&self, level: Level, code: &str, message: String, details: Value) {
        self.events.push(GatewayEvent {
            level,
            code: Some(code.to_string()),
            provider: None,
            message,
            details,
        });
        self.wake_heartbeat();
    }

    pub fn wake_heartbeat(&self) {
        let _ = self.channels.wake_heartbeat.try_send(());
    }

    pub fn wake_reconcile(&self) {
        let _ = self.channels.wake_reconcile.try_send(());
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    pub fn connection_state(&self) -> (String, Option<String>) {
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
        if *lock(&self.ingress.state) == Ingress::Failing && !self.ingress_fresh() {
            let e = lock(&self.ingress.reconcile_error)
                .clone()
                .unwrap_or_default();
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
        if let Some(e) = lock(&self.heartbeat.error).clone() {
            if lock(&self.heartbeat.ok_at).is_none_or_elapsed(self.tuning.heartbeat * 3) {
                return (
                    "disconnected".into(),
                    Some(format!(
                        "heartbeats are not accepted ({e}); Panorama shows this gateway offline until one is"
                    )),
                );
            }
        }
        if self.ingress.realtime_up.load(Ordering::SeqCst) {
            return ("connected".into(), None);
        }
        let detail = lock(&self.ingress.realtime_detail).clone();
        if detail.is_some() {
            ("disconnected".into(), detail)
        } else {
            ("connecting".into(), None)
        }
    }

    /// The last successful reconcile is younger than 3 reconcile intervals (backend.md §5.3).
    pub fn ingress_fresh(&self) -> bool {
        lock(&self.ingress.last_reconcile_ok)
            .is_some_and(|t| t.elapsed() <= self.tuning.reconcile * 3)
    }

    /// Rewrites the status file: always when `force`, else at most every 200 ms.
    pub fn push_status(&self, force: bool) {
        {
            let mut last = lock(&self.last_status_push);
            if !force && last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let (conn, detail) = self.connection_state();
        let in_flight = self.jobs.len() as u64;
        let completed = self.jobs.completed.load(Ordering::SeqCst);
        let failed = self.jobs.failed.load(Ordering::SeqCst);
        let spooled = self.outbox.spool.len() as u64;
        let pending = self.outbox.pending_len() as u64;
        let last_rec = lock(&self.ingress.last_reconcile_ok).map(instant_to_rfc3339);
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
    pub fn heartbeat_status(&self) -> &'static str {
        if self.shutdown.is_draining() || !self.is_accepting() {
            return "pending";
        }
        match *lock(&self.ingress.state) {
            Ingress::Pending => "pending",
            _ if self.ingress_fresh() => "ready",
            _ => "error",
        }
    }

    /// The machine-control layers for a job (PROTOCOL.md §8): heartbeat freshness (90 s) and
    /// the team toggle as last read, as the job starts; the install toggle read from
    /// gateway.json at the time of the call. Handlers that act on the machine read the team
    /// toggle from the backend themselves, with the rows they need anyway.
    pub fn control_source(&self) -> jobs::ControlSource {
        let last_team = self.heartbeat.team_full_control.load(Ordering::SeqCst);
        let heartbeat_fresh =
            lock(&self.heartbeat.ok_at).is_some_and(|t| t.elapsed() < Duration::from_secs(90));
        let config_path = self.settings.paths.config_path.clone();
        Arc::new(move || jobs::ControlState {
            install_enabled: install_full_control(&config_path),
            team_enabled: last_team,
            team_known: true,
            heartbeat_fresh,
        })
    }

    /// The layers as the heartbeat thread just read them (`row`: this gateway's
    /// `team_gateways` row), for closing the shell sessions when a layer is off.
    pub fn control_from_row(&self, row: &Value) -> jobs::ControlState {
        jobs::ControlState {
            install_enabled: install_full_control(&self.settings.paths.config_path),
            team_enabled: row.get("full_control_enabled") == Some(&Value::Bool(true)),
            team_known: true,
            heartbeat_fresh: lock(&self.heartbeat.ok_at)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(90)),
        }
    }
}

/// The install-level toggle (`full_control_enabled` in gateway.json), read now: the
/// `full-control` command may have changed it since the daemon started.
pub(super) fn install_full_control(config_path: &std::path::Path) -> bool {
    crate::config::state::load(config_path)
        .ok()
        .flatten()
        .is_some_and(|s| s.full_control_enabled)
}
