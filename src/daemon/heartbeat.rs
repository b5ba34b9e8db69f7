//! The heartbeat thread: `gateway-heartbeat` every interval and at every status change (with
//! the providers' capabilities), the team's machine-control toggle read after each one, and the
//! queued `gateway_events` rows sent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::{json, Value};

use super::shared::{install_full_control, ElapsedExt, Shared};
use super::status::RuntimeStatus;
use crate::backend::capabilities::capabilities;
use crate::backend::functions;
use crate::backend::jobs::{self as wire, GatewayEvent};
use crate::util::{lock, now_rfc3339};

/// What the heartbeat thread knows of its last sends.
#[derive(Default)]
pub(super) struct HeartbeatState {
    /// Send a heartbeat at the next wake-up even if nothing changed (SIGHUP reload).
    pub force: AtomicBool,
    /// `team_gateways.full_control_enabled` as last read (machine control, PROTOCOL.md §8).
    pub team_full_control: AtomicBool,
    /// Held while a heartbeat is on the wire: never two in flight (the drain sends its own).
    in_flight: Mutex<()>,
    /// The status of the last heartbeat sent (the reconcile loop wakes the heartbeat thread
    /// when the computed status differs).
    sent: Mutex<Option<&'static str>>,
    /// When the backend last accepted a heartbeat, and the error of the last one if it failed.
    pub ok_at: Mutex<Option<Instant>>,
    pub error: Mutex<Option<String>>,
    /// When the current heartbeat outage was last logged as a warning.
    fail_logged: Mutex<Option<Instant>>,
}

impl HeartbeatState {
    pub fn last_sent(&self) -> Option<&'static str> {
        *lock(&self.sent)
    }
}

/// `gateway_events` rows waiting for the heartbeat thread (bounded to 100).
#[derive(Default)]
pub(super) struct EventQueue {
    queue: Mutex<VecDeque<GatewayEvent>>,
    /// No event insert before this (after a transient failure).
    retry_at: Mutex<Option<Instant>>,
}

impl EventQueue {
    /// Queues an event; the oldest goes when the queue is full.
    pub fn push(&self, ev: GatewayEvent) {
        let mut q = lock(&self.queue);
        if q.len() >= 100 {
            q.pop_front();
        }
        q.push_back(ev);
    }

    /// Ends the wait after a failed insert; true when there was one.
    pub fn clear_retry(&self) -> bool {
        lock(&self.retry_at).take().is_some()
    }
}

/// Wraps a provider health sink so that a provider whose status changes (turns unhealthy,
/// or healthy again) wakes the heartbeat thread at once: the backend hears of it within a
/// heartbeat round trip, not at the next tick. Wake-ups coalesce (one thread, one heartbeat in
/// flight; it sends only when the health generation moved).
pub(super) fn waking_sink(
    inner: crate::providers::HealthSink,
    wake: crossbeam_channel::Sender<()>,
) -> crate::providers::HealthSink {
    let last: Mutex<std::collections::HashMap<String, String>> = Mutex::default();
    Arc::new(move |id: &str, h: &crate::providers::health::Health| {
        inner(id, h);
        let status = h.status.as_str().to_string();
        if lock(&last).insert(id.to_string(), status.clone()) != Some(status) {
            let _ = wake.try_send(());
        }
    })
}

pub(super) fn heartbeat_loop(s: Arc<Shared>, wake: Receiver<()>) {
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
        let forced = s.heartbeat.force.swap(false, Ordering::SeqCst);
        let last_sent = s.heartbeat.last_sent();
        if now >= next_tick || last_sent != Some(status) || health != last_health || forced {
            last_health = s.providers.health_generation();
            // A failed send is retried at the next tick, not in a loop.
            send_heartbeat(&s, status);
            next_tick = Instant::now() + s.tuning.heartbeat;
            if let Ok(Some(cs)) = wire::control_state(&s.session) {
                let team_fc = cs.get("full_control_enabled") == Some(&Value::Bool(true));
                s.heartbeat
                    .team_full_control
                    .store(team_fc, Ordering::SeqCst);
                s.edit_status(&|st: &mut RuntimeStatus| st.team_full_control = Some(team_fc));
                // A toggle turned off ends the open shell sessions now, not at the next job.
                s.shell_sessions.enforce_control(s.control_from_row(&cs));
            }
        }
        send_events(&s);
        s.push_status(false);
        let mut wait = next_tick.saturating_duration_since(Instant::now());
        // `ready` turns into `error` when the last reconcile gets too old, even if the
        // reconcile thread is stuck in a slow request: wake up then.
        if let Some(t) = *lock(&s.ingress.last_reconcile_ok) {
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

fn heartbeat_body(s: &Shared, status: &str) -> Value {
    let install_fc = install_full_control(&s.settings.paths.config_path);
    json!({
        "status": status,
        "capabilities": capabilities(
            s.providers.capabilities_providers(),
            Some(s.providers.model_execution_ready()),
            &s.device_name,
            install_fc
        ),
        "device_name": s.device_name,
    })
}

/// A regular heartbeat; none once the drain started (the drain sends its own, and one sent
/// from another thread after `offline` would put the gateway back on the backend's list).
pub(super) fn send_heartbeat(s: &Shared, status: &'static str) -> bool {
    send_heartbeat_within(s, status, functions::HEARTBEAT_TIMEOUT, false)
}

/// The shutdown heartbeats have deadlines of their own, shorter than a normal heartbeat's:
/// 5 s, 2 s when the last one already failed (a backend that is away must not hold up a
/// stop, nor push it past a service manager's stop timeout).
pub(super) fn send_shutdown_heartbeat(s: &Shared, status: &'static str) -> bool {
    let t = if lock(&s.heartbeat.error).is_some() {
        SHUTDOWN_HEARTBEAT_AWAY
    } else {
        SHUTDOWN_HEARTBEAT
    };
    send_heartbeat_within(s, status, t, true)
}

const SHUTDOWN_HEARTBEAT: Duration = Duration::from_secs(5);
const SHUTDOWN_HEARTBEAT_AWAY: Duration = Duration::from_secs(2);

fn send_heartbeat_within(
    s: &Shared,
    status: &'static str,
    timeout: Duration,
    shutdown: bool,
) -> bool {
    let hb = &s.heartbeat;
    let _in_flight = lock(&hb.in_flight);
    if !shutdown && s.shutdown.is_draining() {
        return false;
    }
    *lock(&hb.sent) = Some(status);
    let body = heartbeat_body(s, status);
    let r = functions::invoke(&s.session, "gateway-heartbeat", &body, timeout);
    let ok = match &r {
        Ok(v) if v.get("success") == Some(&Value::Bool(true)) => true,
        Ok(_) => {
            log::warn!(target: "heartbeat", "gateway heartbeat returned an unexpected reply");
            false
        }
        Err(e) => {
            // Once per outage as a warning (and every 10 minutes while it lasts).
            let mut last = lock(&hb.fail_logged);
            if last.is_none_or_elapsed(Duration::from_secs(600)) {
                log::warn!(target: "heartbeat", "failed to send the gateway heartbeat status={status}: {e}; retrying every {} s", s.tuning.heartbeat.as_secs().max(1));
                *last = Some(Instant::now());
            } else {
                log::debug!(target: "heartbeat", "heartbeat still failing status={status}: {e}");
            }
            false
        }
    };
    if ok && lock(&hb.fail_logged).take().is_some() {
        log::info!(target: "heartbeat", "heartbeats accepted again status={status}");
    }
    if ok {
        *lock(&hb.ok_at) = Some(Instant::now());
        *lock(&hb.error) = None;
    } else {
        *lock(&hb.error) = Some(match &r {
            Err(e) => crate::util::truncate_chars(&e.to_string(), 300, "..."),
            Ok(_) => "the backend's reply was not {\"success\": true}".into(),
        });
    }
    // `last_heartbeat_at` is the last one the backend took (status judges staleness by it).
    let at = now_rfc3339();
    s.edit_status(&|st: &mut RuntimeStatus| {
        if ok {
            st.last_heartbeat_at = Some(at.clone());
        }
        st.last_heartbeat_ok = Some(ok);
    });
    if ok {
        log::debug!(target: "heartbeat", "heartbeat sent status={status}");
    }
    s.push_status(true);
    ok
}

/// Sends the queued events (the providers' first). After a transient failure it waits 30 s
/// before trying again (no retry storm when many wake-ups arrive while the backend is away).
pub(super) fn send_events(s: &Shared) {
    let events = &s.events;
    for ev in s.providers.take_events() {
        let mut q = lock(&events.queue);
        if q.len() < 100 {
            q.push_back(GatewayEvent::from_value(&ev));
        }
    }
    if lock(&events.retry_at).is_some_and(|t| Instant::now() < t) {
        return;
    }
    loop {
        let Some(ev) = lock(&events.queue).pop_front() else {
            return;
        };
        match wire::insert_event(&s.session, &ev) {
            Ok(()) => *lock(&events.retry_at) = None,
            Err(e) if e.is_retryable() => {
                let first = lock(&events.retry_at).is_none();
                if first {
                    log::warn!(target: "events", "could not record gateway event {:?}: {e}; will retry", ev.code);
                }
                *lock(&events.retry_at) = Some(Instant::now() + Duration::from_secs(30));
                lock(&events.queue).push_front(ev);
                return;
            }
            Err(e) => {
                log::warn!(target: "events", "the backend refused gateway event {:?}: {e}; dropped", ev.code)
            }
        }
    }
}
