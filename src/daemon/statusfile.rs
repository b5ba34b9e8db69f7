//! Writes `gateway.status.json` (0600, atomically replaced) on every change of the daemon's
//! [`RuntimeStatus`]; `status` reads it without any network.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::secure;
use crate::daemon::runtime::StatusUpdater;
use crate::daemon::status::RuntimeStatus;

pub struct StatusFile {
    path: PathBuf,
    current: Mutex<RuntimeStatus>,
}

impl StatusFile {
    /// Creates the writer and writes the initial status.
    pub fn create(path: &Path, initial: RuntimeStatus) -> Arc<StatusFile> {
        let sf = Arc::new(StatusFile {
            path: path.to_path_buf(),
            current: Mutex::new(initial),
        });
        let initial = sf.snapshot();
        sf.write(&initial);
        sf
    }

    /// Applies `f` and rewrites the file. A write failure is logged, never fatal.
    pub fn update(&self, f: &dyn Fn(&mut RuntimeStatus)) {
        let mut g = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let before = g.clone();
        f(&mut g);
        if *g != before {
            self.write(&g);
        }
    }

    fn write(&self, s: &RuntimeStatus) {
        // The free-text fields carry error messages from the network and the disk: never let a
        // token reach a file that `status` prints.
        let mut s = s.clone();
        for t in [&mut s.detail, &mut s.config_save_error]
            .into_iter()
            .flatten()
        {
            *t = crate::redact::redact(t);
        }
        match serde_json::to_vec_pretty(&s) {
            Ok(mut data) => {
                data.push(b'\n');
                if let Err(e) = secure::write_atomic(&self.path, &data, false) {
                    log::warn!(target: "daemon", "cannot write the status file: {e}");
                }
            }
            Err(e) => log::warn!(target: "daemon", "cannot serialise the status: {e}"),
        }
    }

    pub fn snapshot(&self) -> RuntimeStatus {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The [`StatusUpdater`] handed to the runtime.
    pub fn updater(self: &Arc<Self>) -> StatusUpdater {
        let me = Arc::clone(self);
        Arc::new(move |f: &dyn Fn(&mut RuntimeStatus)| me.update(f))
    }
}

/// Reads a status file (for `status`). None when missing or unreadable.
pub fn read(path: &Path) -> Option<RuntimeStatus> {
    let data = std::fs::read(path).ok()?;
    serde_json::from_slice(&data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_is_redacted_and_the_file_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!(
            "pg-statusfile-{}-{}",
            std::process::id(),
            crate::util::unix_now()
        ));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("gateway.status.json");
        let sf = StatusFile::create(&p, RuntimeStatus::default());
        sf.update(&|s| {
            s.detail = Some("refresh failed: Authorization: Bearer abc.def-ghi".into());
            s.config_save_error = Some("cannot write refresh_token=r-0123456789abcdef".into());
        });
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains("abc.def-ghi"), "{text}");
        assert!(!text.contains("r-0123456789abcdef"), "{text}");
        assert!(text.contains("refresh failed"), "{text}");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
