//! Results the backend did not take yet: one owner-only JSON file per job under the spool dir,
//! written atomically, flushed after a reconnect or a restart, removed once the backend
//! accepted the completion.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub struct Spool {
    dir: PathBuf,
}

/// One spooled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub job_id: String,
    pub body: Value,
    pub path: PathBuf,
}

fn file_name(job_id: &str) -> String {
    let safe = job_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !job_id.is_empty()
        && job_id.len() <= 128;
    if safe {
        format!("{job_id}.json")
    } else {
        let hex: String = job_id
            .bytes()
            .take(100)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("x{hex}.json")
    }
}

impl Spool {
    /// Creates the directory (0700) if needed and tightens its mode.
    pub fn open(dir: &Path) -> Result<Spool, String> {
        fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot create the result spool {}: {e}; check permissions of the config dir",
                dir.display()
            )
        })?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make {} owner-only: {e}", dir.display()))?;
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores the completion body of a job (replacing an older one for the same job), through
    /// the owner-only atomic writer: a fresh temp file (O_EXCL|O_NOFOLLOW, 0600), fsync,
    /// rename. A symlink or another user's file planted in the spool is never written through.
    pub fn put(&self, job_id: &str, body: &Value) -> Result<(), String> {
        let dst = self.dir.join(file_name(job_id));
        let data = json!({ "job_id": job_id, "body": body }).to_string();
        crate::config::secure::write_atomic(&dst, data.as_bytes(), true)
            .map_err(|e| format!("cannot write {}: {e}", dst.display()))
    }

    /// Every readable entry, oldest file first. Unreadable files are renamed `*.bad` (kept for a
    /// human, never retried in a loop) and logged.
    pub fn entries(&self) -> Vec<Entry> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
            })
            .map(|p| {
                let m = fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (m, p)
            })
            .collect();
        files.sort();
        let mut out = Vec::new();
        for (_, p) in files {
            let parsed = fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            let entry = parsed.and_then(|v| {
                let job_id = v.get("job_id")?.as_str()?.to_string();
                let body = v.get("body")?.clone();
                body.is_object().then_some(Entry {
                    job_id,
                    body,
                    path: p.clone(),
                })
            });
            match entry {
                Some(e) => out.push(e),
                None => {
                    log::error!(target: "spool", "unreadable spooled result {}; renamed to .bad for inspection", p.display());
                    let _ = fs::rename(&p, p.with_extension("bad"));
                }
            }
        }
        out
    }

    pub fn remove(&self, e: &Entry) {
        if let Err(err) = fs::remove_file(&e.path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                log::warn!(target: "spool", "cannot remove {}: {err}", e.path.display());
            }
        }
    }

    pub fn len(&self) -> usize {
        fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        n.ends_with(".json") && !n.starts_with('.')
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pgw-spool-{tag}-{}-{}",
            std::process::id(),
            crate::backend::random_u64()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn put_list_remove_owner_only() {
        let d = tmpdir("a");
        let s = Spool::open(&d.join("spool")).unwrap();
        assert_eq!(
            fs::metadata(s.dir()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        s.put("job-1", &json!({"status": "completed"})).unwrap();
        s.put("../evil", &json!({"status": "failed"})).unwrap();
        s.put("job-1", &json!({"status": "failed"})).unwrap();
        assert_eq!(s.len(), 2);
        let es = s.entries();
        assert_eq!(es.len(), 2);
        let e1 = es.iter().find(|e| e.job_id == "job-1").unwrap();
        assert_eq!(e1.body, json!({"status": "failed"}));
        assert_eq!(
            fs::metadata(&e1.path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(es
            .iter()
            .any(|e| e.job_id == "../evil" && e.path.parent() == Some(s.dir())));
        for e in &es {
            s.remove(e);
        }
        assert_eq!(s.len(), 0);
        fs::write(s.dir().join("broken.json"), "{").unwrap();
        assert!(s.entries().is_empty());
        assert!(s.dir().join("broken.bad").exists());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn put_never_writes_through_a_planted_symlink() {
        let d = tmpdir("link");
        let s = Spool::open(&d.join("spool")).unwrap();
        let victim = d.join("victim");
        fs::write(&victim, "keep me").unwrap();
        // The old writer used a fixed temp name opened with create+truncate: a symlink there
        // made the gateway truncate and overwrite the target.
        std::os::unix::fs::symlink(&victim, s.dir().join(".job-1.json.tmp")).unwrap();
        // A symlink at the destination name is refused too.
        std::os::unix::fs::symlink(&victim, s.dir().join("job-2.json")).unwrap();
        s.put("job-1", &json!({"status": "completed"})).unwrap();
        assert!(s.put("job-2", &json!({"status": "completed"})).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me");
        let e = s.entries();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].job_id, "job-1");
        let _ = fs::remove_dir_all(&d);
    }
}
