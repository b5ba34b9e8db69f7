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
        match serde_json::to_vec_pretty(s) {
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
