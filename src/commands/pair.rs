//! `pair <CODE>`: exchange a pairing code for a session and save it. Owner: Connect (issue 4).

use std::time::Duration;

use crate::backend::functions::exchange_pairing_code;
use crate::config::state;
use crate::config::Settings;
use crate::util::hostname;

/// Parsed `pair` arguments (parsing: Foundation's cli.rs).
#[derive(Debug, Clone, Default)]
pub struct PairArgs {
    pub code: String,
    /// `--no-start`: do not start the daemon afterwards.
    pub no_start: bool,
}

/// Runs `pair`; returns the exit code. Prints its own output.
pub fn run(settings: &Settings, args: &PairArgs) -> i32 {
    let from_stdin;
    let code = if args.code.trim() == "-" {
        match read_code(&mut std::io::stdin().lock(), is_tty(0)) {
            Ok(c) => {
                from_stdin = c;
                from_stdin.as_str()
            }
            Err(e) => {
                eprintln!("{e}");
                return 1;
            }
        }
    } else {
        args.code.trim()
    };
    if code.is_empty() {
        eprintln!("Pairing code is required. Usage: panorama-gateway pair <CODE> [--device-name NAME] [--no-start]");
        eprintln!("Get a code in Panorama (team settings → gateways → pair a gateway).");
        return 2;
    }
    // The code is single-use: everything the save after the exchange needs is checked first,
    // so a full disk or an unusable config directory does not burn it.
    let ready = crate::config::secure::ensure_dir(&settings.paths.config_dir)
        .and_then(|_| state::check_writable(&settings.paths.config_path));
    if let Err(e) = ready {
        eprintln!(
            "Cannot save a pairing: {}.",
            e.to_string().trim_end_matches('.')
        );
        eprintln!(
            "The pairing code was not used: fix this (or choose another --config-dir / --config-path), then run pair again with the same code."
        );
        log::warn!(target: "pair", "pairing not attempted: the state cannot be saved: {e}");
        return 1;
    }
    let existing = match state::load(&settings.paths.config_path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "Cannot read the gateway state: {e}. Fix or remove the file, then run pair again."
            );
            return 1;
        }
    };
    let cfg = match crate::config::backend_config(settings, existing.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Missing Supabase configuration for pairing: {e}");
            return 1;
        }
    };
    let device_name = settings
        .device_name
        .clone()
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(hostname);
    let agent = match crate::backend::net::Net::from_env(settings.ca_file.as_deref())
        .and_then(|n| n.agent_for(&cfg.url))
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Cannot set up the connection to the backend: {e}");
            return 1;
        }
    };
    let pairing =
        match exchange_pairing_code(&agent, &cfg, code, &device_name, Duration::from_secs(30)) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                log::warn!(target: "pair", "pairing failed: {e}");
                return 1;
            }
        };
    let saved = state::update(&settings.paths.config_path, |s| {
        s.supabase_url = Some(cfg.url.clone());
        s.supabase_anon_key = Some(cfg.anon_key.clone());
        s.access_token = Some(pairing.access_token.clone());
        s.refresh_token = Some(pairing.refresh_token.clone());
        s.gateway_id = Some(pairing.gateway_id.clone());
        s.team_id = Some(pairing.team_id.clone());
        s.device_name = Some(device_name.clone());
    });
    if let Err(e) = saved {
        eprintln!(
            "Paired, but the session could not be saved: {e}. Fix the problem and pair again with a new code."
        );
        return 1;
    }
    log::info!(target: "pair", "paired gateway_id={} team_id={} device={device_name:?}", pairing.gateway_id, pairing.team_id);
    println!("Paired this machine with Panorama as \"{device_name}\".");
    if settings.verbose {
        println!("  Gateway ID: {}", pairing.gateway_id);
        println!("  Team ID: {}", pairing.team_id);
        println!("  State: {}", settings.paths.config_path.display());
    }
    println!("Validating providers...");
    let registry = crate::providers::Registry::discover(&settings.cli_overrides);
    registry.set_work_root(settings.paths.config_dir.join("work"));
    registry.set_health_sink(crate::state_store::health_sink(
        settings.paths.config_path.clone(),
    ));
    let results = registry.check_health(crate::providers::health::Mode::Full, Some("pairing"));
    for (id, h) in &results {
        match &h.error {
            Some(e) => println!(
                "  {}: {} ({})",
                id.label(),
                h.status.as_str(),
                crate::providers::plan::shorten(e, 400)
            ),
            None => println!("  {}: {}", id.label(), h.status.as_str()),
        }
    }
    if !registry.model_execution_ready() {
        println!("  No provider is ready: model jobs will fail until one works (see `panorama-gateway doctor`).");
    }
    send_pairing_events(&registry, &cfg, &pairing, settings);
    if args.no_start {
        println!("Next: run `panorama-gateway start` to connect this gateway.");
        return 0;
    }
    if let Ok(crate::daemon::pidfile::PidState::Running(pid)) =
        crate::daemon::pidfile::probe(&settings.paths.pid_path)
    {
        println!("A gateway is already running (pid {pid}) with the previous pairing.");
        println!(
            "Restart it to use the new one: `panorama-gateway stop && panorama-gateway start`."
        );
        return 0;
    }
    match start_daemon(settings) {
        Ok(pid) => {
            println!("Gateway started in the background (pid {pid}). Check it with `panorama-gateway status`.");
            0
        }
        Err(e) => {
            eprintln!("Paired, but the gateway could not be started: {e}");
            eprintln!("Run `panorama-gateway start` when the problem is fixed.");
            1
        }
    }
}

/// Longest line `pair -` reads: pairing codes are short; anything longer is not one.
const MAX_CODE_LINE: u64 = 1024;

fn is_tty(fd: libc::c_int) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// `pair -`: the code is the first line of standard input (kept out of shell history and
/// `ps`). On a terminal, asks for it first.
fn read_code(input: &mut dyn std::io::BufRead, tty: bool) -> Result<String, String> {
    use std::io::{BufRead, Read};
    if tty {
        eprint!("Pairing code: ");
    }
    let mut line = String::new();
    let n = input
        .take(MAX_CODE_LINE)
        .read_line(&mut line)
        .map_err(|e| format!("Cannot read the pairing code from standard input: {e}. Pipe it in, for example: printf '%s\\n' \"$CODE\" | panorama-gateway pair -"))?;
    let code = line.trim();
    if n as u64 >= MAX_CODE_LINE && !line.ends_with('\n') {
        return Err(format!(
            "The first line of standard input is longer than {MAX_CODE_LINE} bytes: that is not a pairing code. Pipe in just the code from Panorama."
        ));
    }
    if code.is_empty() {
        return Err("No pairing code on standard input (`pair -` reads it from there). Pipe it in, for example: printf '%s\\n' \"$CODE\" | panorama-gateway pair -".into());
    }
    Ok(code.to_string())
}

fn start_daemon(settings: &Settings) -> Result<u32, String> {
    crate::commands::start::start_background(settings)
}

/// Records the providers' validation results as gateway_events (best effort).
fn send_pairing_events(
    registry: &crate::providers::Registry,
    cfg: &crate::config::BackendConfig,
    pairing: &crate::backend::functions::Pairing,
    settings: &Settings,
) {
    let events = registry.take_events();
    if events.is_empty() {
        return;
    }
    let agent = crate::backend::net::Net::from_env(settings.ca_file.as_deref())
        .and_then(|n| n.agent_for(&cfg.url))
        .unwrap_or_else(|_| crate::backend::new_agent());
    let session = crate::backend::session::Session::new(
        agent,
        cfg,
        &pairing.gateway_id,
        &pairing.team_id,
        &pairing.access_token,
        &pairing.refresh_token,
        Box::new(crate::state_store::FileTokenStore::new(
            settings.paths.config_path.clone(),
            &pairing.gateway_id,
        )),
    );
    for ev in events {
        let e = crate::backend::jobs::GatewayEvent::from_value(&ev);
        if let Err(err) = crate::backend::jobs::insert_event(&session, &e) {
            log::warn!(target: "pair", "could not record a provider validation event: {err}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_dash_reads_the_first_line_of_stdin() {
        let mut r = std::io::Cursor::new(&b"  K7QM-2XWP \nignored\n"[..]);
        assert_eq!(read_code(&mut r, false).unwrap(), "K7QM-2XWP");
        let mut r = std::io::Cursor::new(&b"ABCD"[..]);
        assert_eq!(read_code(&mut r, false).unwrap(), "ABCD");
        for empty in [&b""[..], b"\n", b"   \n"] {
            let e = read_code(&mut std::io::Cursor::new(empty), false).unwrap_err();
            assert!(e.contains("No pairing code on standard input"), "{e}");
        }
        let long = vec![b'A'; 5000];
        let e = read_code(&mut std::io::Cursor::new(&long[..]), false).unwrap_err();
        assert!(e.contains("longer than 1024 bytes"), "{e}");
    }
}
