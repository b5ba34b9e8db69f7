//! The TLS listener (`--tls-cert`, `--tls-key`): terminates TLS with rustls and relays the
//! plaintext to the emulator's own HTTP listener on a private loopback port, so REST,
//! functions and the realtime websocket all work over https/wss unchanged. One thread per
//! connection; poll(2) on both sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A connection idle this long (no byte either way) is closed.
const IDLE_MS: i32 = 120_000;

/// The server config from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read --tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {} is not PEM: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {} holds no certificate",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read a private key from --tls-key {}: {e}",
            key.display()
        )
    })?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup failed: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("the TLS certificate and key do not fit together: {e}"))?;
    Ok(Arc::new(cfg))
}

/// Accepts TLS connections on `listener` and relays each to `plain`.
pub fn serve(listener: TcpListener, plain: SocketAddr, cfg: Arc<rustls::ServerConfig>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let cfg = cfg.clone();
        let _ = std::thread::Builder::new()
            .name("tls-conn".into())
            .spawn(move || {
                if let Err(e) = relay(stream, plain, cfg) {
                    log::debug!(target: "tls", "connection ended: {e}");
                }
            });
    }
}

fn readable(fds: &mut [libc::pollfd]) -> std::io::Result<bool> {
    // SAFETY: a valid array of pollfd for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, IDLE_MS) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(true);
        }
        return Err(e);
    }
    Ok(n > 0)
}

fn flush_tls(conn: &mut rustls::ServerConnection, tcp: &mut TcpStream) -> std::io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(tcp)?;
    }
    Ok(())
}

fn relay(
    mut tcp: TcpStream,
    plain: SocketAddr,
    cfg: Arc<rustls::ServerConfig>,
) -> Result<(), String> {
    let mut conn = rustls::ServerConnection::new(cfg).map_err(|e| e.to_string())?;
    let mut back = TcpStream::connect(plain).map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let _ = back.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        flush_tls(&mut conn, &mut tcp).map_err(|e| e.to_string())?;
        let mut fds = [
            libc::pollfd {
                fd: tcp.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: back.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if !readable(&mut fds).map_err(|e| e.to_string())? {
            return Err("idle".into());
        }
        if fds[0].revents != 0 {
            match conn.read_tls(&mut tcp) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
            if let Err(e) = conn.process_new_packets() {
                let _ = flush_tls(&mut conn, &mut tcp);
                log::info!(target: "tls", "TLS handshake or record failed: {e}");
                return Err(e.to_string());
            }
            loop {
                match conn.reader().read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => back.write_all(&buf[..n]).map_err(|e| e.to_string())?,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        if fds[1].revents != 0 {
            let n = back.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                conn.send_close_notify();
                let _ = flush_tls(&mut conn, &mut tcp);
                return Ok(());
            }
            conn.writer()
                .write_all(&buf[..n])
                .map_err(|e| e.to_string())?;
        }
    }
}
