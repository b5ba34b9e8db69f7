//! A long-lived child with piped stdio (the remote shell sessions): spawned isolated in its
//! own process group, output read through poll(2) on non-blocking pipes, input written with a
//! deadline, exit observed with waitid(WNOWAIT) so the group id stays reserved until the reap.
//! The session logic (buffering, idle expiry, who may act) lives in `jobs/shell/`.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::{isolate, peek_exit, set_nonblocking, signal_group};

/// A started session child: its output pipes and the process itself. The stdin end is handed
/// out separately ([`SessionInput`]) so writers never wait for the reader.
pub struct SessionChild {
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// The child's pid, which is also its process group id.
    pub pgid: i32,
}

/// The exit of a reaped session child.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Starts `program args` in `cwd` with exactly `env`, in a process group of its own, stdin,
/// stdout and stderr piped (all three non-blocking).
pub fn spawn_session(
    program: &Path,
    args: &[&str],
    env: &[(OsString, OsString)],
    cwd: &Path,
) -> io::Result<(SessionChild, Option<SessionInput>)> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    isolate(&mut cmd);
    let mut child = cmd.spawn()?;
    let stdin = child.stdin.take().map(|s| {
        set_nonblocking(s.as_raw_fd());
        SessionInput(s)
    });
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    if let Some(p) = &stdout {
        set_nonblocking(p.as_raw_fd());
    }
    if let Some(p) = &stderr {
        set_nonblocking(p.as_raw_fd());
    }
    let pgid = child.id() as i32;
    Ok((
        SessionChild {
            child,
            stdout,
            stderr,
            pgid,
        },
        stdin,
    ))
}

/// SIGTERM to the whole group of a session child.
pub fn terminate_group(pgid: i32) {
    signal_group(pgid, libc::SIGTERM);
}

/// SIGKILL to the whole group of a session child.
pub fn kill_group(pgid: i32) {
    signal_group(pgid, libc::SIGKILL);
}

impl SessionChild {
    /// True once the child has exited (or cannot be waited for any more: that counts as exited
    /// too, so no loop outlives it). Leaves it a zombie until [`SessionChild::reap`].
    pub fn has_exited(&self) -> bool {
        !matches!(peek_exit(self.child.id() as i32), Ok(false))
    }

    /// True while stdout or stderr is still open.
    pub fn output_open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    /// Waits up to `tick` for output, then hands what both pipes have (up to 16 chunks of
    /// 64 KiB each) to `on_data`. Closes a pipe at its end.
    pub fn read_output(&mut self, tick: Duration, buf: &mut [u8], on_data: &mut dyn FnMut(&[u8])) {
        let mut fds: Vec<libc::pollfd> = [
            self.stdout.as_ref().map(|p| p.as_raw_fd()),
            self.stderr.as_ref().map(|p| p.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
        if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
            return;
        }
        // SAFETY: fds is a valid pollfd array for the duration of the call.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                tick.as_millis() as i32,
            );
        }
        if let Some(p) = self.stdout.as_mut() {
            if !drain_pipe(p, buf, on_data) {
                self.stdout = None;
            }
        }
        if let Some(p) = self.stderr.as_mut() {
            if !drain_pipe(p, buf, on_data) {
                self.stderr = None;
            }
        }
    }

    /// Closes the output pipes and reaps the child.
    pub fn reap(mut self) -> Option<SessionExit> {
        self.stdout = None;
        self.stderr = None;
        self.child.wait().ok().map(|s| SessionExit {
            code: s.code(),
            signal: s.signal(),
        })
    }
}

/// Reads what `p` has now; false when the pipe ended (EOF or error).
fn drain_pipe(p: &mut impl Read, buf: &mut [u8], on_data: &mut dyn FnMut(&[u8])) -> bool {
    for _ in 0..16 {
        match p.read(buf) {
            Ok(0) => return false,
            Ok(n) => on_data(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

/// The write end of a session child's stdin (non-blocking).
pub struct SessionInput(ChildStdin);

impl SessionInput {
    /// Writes all of `input` within `timeout`, waiting with poll(2) while the pipe is full.
    /// Err = (bytes written, why the rest was not).
    pub fn write_within(
        &mut self,
        input: &[u8],
        timeout: Duration,
    ) -> Result<usize, (usize, String)> {
        let deadline = Instant::now() + timeout;
        let mut written = 0;
        while written < input.len() {
            match self.0.write(&input[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err((
                            written,
                            format!("the shell did not take its input within {} s (is a command still running and not reading stdin?)", timeout.as_secs()),
                        ));
                    }
                    let mut p = libc::pollfd {
                        fd: self.0.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe {
                        libc::poll(&mut p, 1, 100);
                    }
                }
                Err(e) => return Err((written, format!("writing to the shell failed: {e}"))),
            }
        }
        Ok(written)
    }
}
