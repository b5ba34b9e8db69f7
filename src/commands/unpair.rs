//! `unpair`: stop the daemon and remove this gateway's identity and session from gateway.json.
//! Everything else in the file stays (backend settings, device name, full control, provider
//! health, `vmGuest`, keys this version does not know). Says what it will do first.

use crate::config::state;
use crate::config::Settings;
use crate::daemon::pidfile::{self, PidState};

/// The keys `unpair` removes: the credentials and identity of the pairing.
pub const CREDENTIAL_KEYS: [&str; 4] = ["accessToken", "refreshToken", "gatewayId", "teamId"];

/// Runs `unpair`; returns the exit code.
pub fn run(settings: &Settings) -> i32 {
    let path = &settings.paths.config_path;
    let current = match state::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ERROR cannot read the gateway state: {e}");
            return 1;
        }
    };
    let has_credentials = current.as_ref().is_some_and(|s| {
        s.access_token.is_some()
            || s.refresh_token.is_some()
            || s.gateway_id.is_some()
            || s.team_id.is_some()
    });
    let running = matches!(
        pidfile::probe(&settings.paths.pid_path),
        Ok(PidState::Running(_))
    );
    if !has_credentials && !running {
        println!(
            "This machine is not paired ({} holds no gateway credentials); nothing to do.",
            path.display()
        );
        return 0;
    }
    println!("Unpairing this machine:");
    if running {
        println!("  1. stop the running gateway (it finishes in-flight jobs first);");
    }
    println!(
        "  {}. remove {} from {}",
        if running { 2 } else { 1 },
        CREDENTIAL_KEYS.join(", "),
        path.display()
    );
    println!("     (the backend settings, device name, full control and any other keys stay).");
    if running && super::stop::run(settings, false, None) != 0 {
        eprintln!("ERROR the gateway is still running, so its credentials were left in place; stop it (panorama-gateway stop --force) and run unpair again.");
        return 1;
    }
    if has_credentials {
        let removed = state::update(path, |s| {
            s.access_token = None;
            s.refresh_token = None;
            s.gateway_id = None;
            s.team_id = None;
        });
        if let Err(e) = removed {
            eprintln!("ERROR could not remove the credentials: {e}");
            return 1;
        }
    }
    log::info!(target: "pair", "unpaired: credentials removed from {}", path.display());
    println!("OK This machine is unpaired. The gateway still shows in Panorama until you remove it there (team settings → gateways); pair again with `panorama-gateway pair <CODE>`.");
    0
}
