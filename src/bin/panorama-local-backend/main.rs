//! panorama-local-backend: a Supabase-compatible emulator of the Panorama backend, for tests,
//! benchmarks and first runs. Self-contained: it does not use the gateway's modules.
//! Owner: Local backend (issue 3). See docs/README-local-backend.md.
//!
//! One loopback port serves GoTrue (`/auth/v1`), PostgREST (`/rest/v1`), Edge Functions
//! (`/functions/v1`), Realtime (`/realtime/v1/websocket`) and the emulator's admin API
//! (`/admin/v1`: faults and stats). Threads, no async runtime.

mod app;
mod auth;
mod faults;
mod functions;
mod http;
mod jwt;
mod postgrest;
mod query;
mod realtime;
mod rls;
mod router;
mod store;
mod tls;
mod util;
mod ws;

use app::{App, Config};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "usage: panorama-local-backend [--listen 127.0.0.1:54321] [--data FILE] \
[--tls-cert PEM --tls-key PEM] [--access-token-ttl SECS] [--jwt-secret S] [--pairing-code-ttl SECS] [--refresh-reuse-secs SECS] [-v]";

/// Log lines as the project writes them: `<RFC 3339 ms>Z LEVEL [component] message key=value`.
struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let line = format!(
                "{} {:<5} [{}] {}\n",
                util::now_iso(),
                r.level(),
                r.target(),
                r.args()
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
    fn flush(&self) {}
}

struct Args {
    listen: String,
    data: Option<PathBuf>,
    access_ttl: u64,
    jwt_secret: Option<String>,
    pairing_ttl: u64,
    refresh_reuse: u64,
    verbose: bool,
    /// `--tls-cert` / `--tls-key`: serve https/wss on --listen.
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut a = Args {
        listen: "127.0.0.1:54321".into(),
        data: None,
        access_ttl: 3600,
        jwt_secret: None,
        pairing_ttl: 600,
        refresh_reuse: 10,
        verbose: false,
        tls_cert: None,
        tls_key: None,
    };
    let mut p = lexopt::Parser::from_env();
    let num = |v: std::ffi::OsString, flag: &str| -> Result<u64, String> {
        v.to_string_lossy()
            .parse::<u64>()
            .map_err(|_| format!("{flag} needs a whole number of seconds"))
    };
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("listen") => {
                a.listen = p
                    .value()
                    .map_err(|e| e.to_string())?
                    .to_string_lossy()
                    .into()
            }
            Long("data") => a.data = Some(PathBuf::from(p.value().map_err(|e| e.to_string())?)),
            Long("tls-cert") => {
                a.tls_cert = Some(PathBuf::from(p.value().map_err(|e| e.to_string())?))
            }
            Long("tls-key") => {
                a.tls_key = Some(PathBuf::from(p.value().map_err(|e| e.to_string())?))
            }
            Long("access-token-ttl") => {
                a.access_ttl = num(p.value().map_err(|e| e.to_string())?, "--access-token-ttl")?;
                if a.access_ttl == 0 {
                    return Err("--access-token-ttl must be at least 1 second".into());
                }
            }
            Long("jwt-secret") => {
                let s: String = p
                    .value()
                    .map_err(|e| e.to_string())?
                    .to_string_lossy()
                    .into();
                if s.len() < 16 {
                    return Err("--jwt-secret must be at least 16 characters".into());
                }
                a.jwt_secret = Some(s);
            }
            Long("pairing-code-ttl") => {
                a.pairing_ttl = num(p.value().map_err(|e| e.to_string())?, "--pairing-code-ttl")?
            }
            Long("refresh-reuse-secs") => {
                a.refresh_reuse = num(
                    p.value().map_err(|e| e.to_string())?,
                    "--refresh-reuse-secs",
                )?
            }
            Short('v') | Long("verbose") => a.verbose = true,
            Short('h') | Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unexpected argument {}", other.unexpected())),
        }
    }
    if a.tls_cert.is_some() != a.tls_key.is_some() {
        return Err(
            "--tls-cert and --tls-key go together (PEM certificate chain and its private key)"
                .into(),
        );
    }
    Ok(a)
}

/// Blocks SIGTERM/SIGINT in every thread (call before spawning any) and returns the set.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-mask calls on a zero-initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait on a valid, blocked signal set.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
    sig
}

/// Writes the snapshot if anything changed. Logs a failure once per streak of failures
/// (`failing`: the last write failed).
fn persist(app: &App, failing: &mut bool) -> Result<(), String> {
    if let Some(path) = &app.cfg.data_path {
        if app.dirty.swap(false, Ordering::SeqCst) {
            let bytes = app.db().snapshot_json();
            if let Err(e) = store::write_atomic(path, &bytes) {
                app.dirty.store(true, Ordering::SeqCst);
                let msg = format!("cannot write data file {}: {e}", path.display());
                if !std::mem::replace(failing, true) {
                    log::error!(target: "store", "{msg}; retrying every 200 ms (check the directory exists and is writable)");
                }
                return Err(msg);
            }
            if std::mem::replace(failing, false) {
                log::info!(target: "store", "data file written again path={}", path.display());
            }
        }
    }
    Ok(())
}

/// Ends the process after a start-up failure: the message, then exit status 1.
fn die(message: impl std::fmt::Display) -> ! {
    eprintln!("panorama-local-backend: {message}");
    std::process::exit(1);
}

fn init_logging(verbose: bool) {
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    if log::set_boxed_logger(Box::new(StderrLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}

/// The rows (the data file's, or none) and the JWT secret: --jwt-secret, else the one the
/// data file kept, else a new one (kept in a persistent backend's data file, so keys and
/// tokens stay valid across restarts).
fn open_store(args: &Args) -> (store::Db, String) {
    let mut db = match &args.data {
        Some(p) if p.exists() => store::Db::load(p).unwrap_or_else(|e| die(e)),
        _ => store::Db::new(),
    };
    let secret = match (&args.jwt_secret, &db.jwt_secret) {
        (Some(s), _) => s.clone(),
        (None, Some(saved)) => saved.clone(),
        (None, None) => {
            let s = util::random_token(32);
            if args.data.is_some() {
                // Keep keys and tokens valid across restarts of a persistent backend.
                db.jwt_secret = Some(s.clone());
            }
            s
        }
    };
    (db, secret)
}

/// The sockets the backend serves on. With TLS, --listen is the TLS listener (`public`) and
/// the HTTP listener moves to a private loopback port that only the TLS relay talks to.
struct Listeners {
    http: TcpListener,
    http_addr: SocketAddr,
    public: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    /// The address clients use.
    addr: SocketAddr,
}

fn bind(args: &Args) -> Listeners {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls::server_config(c, k).unwrap_or_else(|e| die(e))),
        _ => None,
    };
    let listen = |on: &str| {
        TcpListener::bind(on).unwrap_or_else(|e| {
            die(format!(
                "cannot listen on {}: {e}; pick another address with --listen (port 0 picks a free port)",
                args.listen
            ))
        })
    };
    let public = tls.map(|cfg| (listen(&args.listen), cfg));
    let http = listen(if public.is_some() {
        "127.0.0.1:0"
    } else {
        &args.listen
    });
    let address = |l: &TcpListener| {
        l.local_addr()
            .unwrap_or_else(|e| die(format!("cannot read the bound address: {e}")))
    };
    let http_addr = address(&http);
    let addr = public.as_ref().map_or(http_addr, |(l, _)| address(l));
    Listeners {
        http,
        http_addr,
        public,
        addr,
    }
}

/// A persistent backend writes its data file now (so a bad --data path fails the start), then
/// every 200 ms when something changed.
fn start_persistence(app: &Arc<App>) {
    if app.cfg.data_path.is_none() {
        return;
    }
    app.mark_dirty();
    let mut failing = false;
    if let Err(e) = persist(app, &mut failing) {
        die(format!("{e}; pass a --data path in a writable directory"));
    }
    let a = app.clone();
    let _ = std::thread::Builder::new()
        .name("persist".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let _ = persist(&a, &mut failing);
        });
}

/// The realtime sweep, the HTTP accept thread and, with TLS, the TLS relay.
fn start_serving(app: &Arc<App>, listeners: Listeners) {
    {
        // Realtime closes channels whose token expires, without waiting for an event.
        let a = app.clone();
        let _ = std::thread::Builder::new()
            .name("rt-sweep".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(500));
                a.hub.sweep_expired(&a);
            });
    }
    let a = app.clone();
    let http = listeners.http;
    if let Err(e) = std::thread::Builder::new()
        .name("http-accept".into())
        .spawn(move || http::serve(a, http))
    {
        die(format!("cannot start the accept thread: {e}"));
    }
    if let Some((public, cfg)) = listeners.public {
        let plain_addr = listeners.http_addr;
        let _ = std::thread::Builder::new()
            .name("tls-accept".into())
            .spawn(move || tls::serve(public, plain_addr, cfg));
    }
}

/// The one stdout line tests and scripts read: url, anon_key, service_role_key, in that order.
fn announce(app: &App, args: &Args, addr: SocketAddr) {
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    log::info!(target: "main", "listening addr={addr} data={}", args.data.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "memory".into()));
    // Keys in the documented order: url, anon_key, service_role_key.
    let line = format!(
        "{{\"url\":{},\"anon_key\":{},\"service_role_key\":{}}}",
        serde_json::Value::String(format!("{scheme}://{addr}")),
        serde_json::Value::String(app.anon_key.clone()),
        serde_json::Value::String(app.service_key.clone()),
    );
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// After SIGTERM/SIGINT: realtime sockets dropped, the last snapshot written, exit.
fn stop(app: &App, sig: i32) -> ! {
    log::info!(target: "main", "stopping signal={sig}");
    app.hub.drop_all();
    // The rows stay locked from the last snapshot to the exit: a request still being handled
    // can no longer change a row (and be answered 200) after the snapshot, which would lose an
    // update its client saw succeed (a claim, then the job queued again after a restart).
    let db = app.db();
    if let Some(path) = &app.cfg.data_path {
        if let Err(e) = store::write_atomic(path, &db.snapshot_json()) {
            die(format!(
                "cannot write data file {}: {e}; the last changes are lost",
                path.display()
            ));
        }
    }
    std::process::exit(0);
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("panorama-local-backend: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    init_logging(args.verbose);
    let sigset = block_signals();
    let (db, secret) = open_store(&args);
    let listeners = bind(&args);
    let addr = listeners.addr;
    let app = Arc::new(App::new(
        Config {
            access_ttl_secs: args.access_ttl,
            pairing_ttl_secs: args.pairing_ttl,
            refresh_reuse_secs: args.refresh_reuse,
            data_path: args.data.clone(),
        },
        secret.into_bytes(),
        db,
    ));
    start_persistence(&app);
    start_serving(&app, listeners);
    announce(&app, &args, addr);
    let sig = wait_signal(&sigset);
    stop(&app, sig);
}
