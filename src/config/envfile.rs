//! `.env` files: `--env NAME` / `PANORAMA_ENV` loads `.env.NAME` from the repository root
//! (nearest ancestor of the working directory holding a `.git` or the env file), falling back
//! to `.env` for `local`; `--env-file PATH` / `PANORAMA_ENV_FILE` loads that file. Values
//! already in the environment win. Call before any thread starts (it sets variables).
//!
//! Syntax (dotenv): blank lines and `#` comments; optional `export `; `KEY=value`; values
//! unquoted (trimmed, ` #` starts a comment), single-quoted (literal) or double-quoted (escapes
//! `\n \r \t \\ \" \$`, may span lines).

use std::path::{Path, PathBuf};

/// Accepted environment names (aliases: `production` → prod, `development` → local).
pub const ENV_NAMES: &[&str] = &["local", "dev", "test", "stage", "prod"];

/// Normalises an environment name; Err with a usage message for an unknown one.
pub fn normalize_env_name(name: &str) -> Result<String, String> {
    let n = name.trim().to_ascii_lowercase();
    let n = match n.as_str() {
        "production" => "prod".to_string(),
        "development" => "local".to_string(),
        "staging" => "stage".to_string(),
        _ => n,
    };
    if ENV_NAMES.contains(&n.as_str()) {
        Ok(n)
    } else {
        Err(format!(
            "unknown environment {name:?}: use one of local, dev, test, stage, prod"
        ))
    }
}

/// Finds `.env.NAME` (or `.env` for local) from `start` upwards, stopping at the first
/// directory that holds a `.git`.
pub fn find_env_file(start: &Path, name: &str) -> Result<PathBuf, String> {
    let mut candidates = vec![format!(".env.{name}")];
    if name == "local" {
        candidates.push(".env".into());
    }
    let mut dir = Some(start);
    while let Some(d) = dir {
        for c in &candidates {
            let p = d.join(c);
            if p.is_file() {
                return Ok(p);
            }
        }
        if d.join(".git").exists() {
            break;
        }
        dir = d.parent();
    }
    Err(format!(
        "environment file not found: looked for {} from {} up to the repository root; create it or pass --env-file PATH",
        candidates.join(" or "),
        start.display()
    ))
}

/// Parses dotenv text into ordered pairs. Errors name the file and line.
pub fn parse(path: &Path, text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut line = 1;
    let err = |line: usize, what: &str| format!("{}:{line}: {what}", path.display());
    while i < chars.len() {
        // skip leading whitespace and blank lines
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t' || chars[i] == '\r') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        if chars[i] == '\n' {
            line += 1;
            i += 1;
            continue;
        }
        if chars[i] == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 7)].iter().collect();
        if rest == "export " || rest == "export\t" {
            i += 7;
            while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
                i += 1;
            }
        }
        let ks = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
        {
            i += 1;
        }
        let key: String = chars[ks..i].iter().collect();
        if key.is_empty() || key.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(err(
                line,
                "expected KEY=value (a key is letters, digits and _)",
            ));
        }
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            return Err(err(line, &format!("expected '=' after {key}")));
        }
        i += 1;
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        let start_line = line;
        let mut value = String::new();
        if i < chars.len() && (chars[i] == '"' || chars[i] == '\'' || chars[i] == '`') {
            let q = chars[i];
            i += 1;
            let mut closed = false;
            while i < chars.len() {
                let c = chars[i];
                if c == q {
                    closed = true;
                    i += 1;
                    break;
                }
                if c == '\n' {
                    line += 1;
                }
                if c == '\\' && q == '"' && i + 1 < chars.len() {
                    let n = chars[i + 1];
                    match n {
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        '\\' | '"' | '$' => value.push(n),
                        _ => {
                            value.push('\\');
                            value.push(n);
                        }
                    }
                    i += 2;
                    continue;
                }
                value.push(c);
                i += 1;
            }
            if !closed {
                return Err(err(
                    start_line,
                    &format!("unterminated {q} quote in the value of {key}"),
                ));
            }
            // only whitespace or a comment may follow
            while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t' || chars[i] == '\r') {
                i += 1;
            }
            if i < chars.len() && chars[i] != '\n' && chars[i] != '#' {
                return Err(err(
                    line,
                    &format!("unexpected text after the quoted value of {key}"),
                ));
            }
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else {
            let vs = i;
            while i < chars.len() && chars[i] != '\n' {
                if chars[i] == '#' && i > vs && (chars[i - 1] == ' ' || chars[i - 1] == '\t') {
                    break;
                }
                i += 1;
            }
            value = chars[vs..i].iter().collect::<String>().trim().to_string();
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Loads a file into the process environment; variables already set are kept. Returns how
/// many were set.
pub fn load_file(path: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read environment file {}: {e}; check the path given to --env-file / --env",
            path.display()
        )
    })?;
    let pairs = parse(path, &text)?;
    let mut set: Vec<String> = Vec::new();
    for (k, v) in pairs {
        if std::env::var_os(&k).is_none() {
            std::env::set_var(&k, v);
            set.push(k);
        }
    }
    // Remember what came from the file: none of it reaches a child process (exec::env).
    if !set.is_empty() {
        let var = crate::exec::ENV_FILE_NAMES_VAR;
        let mut names: Vec<String> = std::env::var(var)
            .unwrap_or_default()
            .split(',')
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect();
        names.extend(set.iter().cloned());
        std::env::set_var(var, names.join(","));
    }
    Ok(set.len())
}

/// An env file decides where the gateway sends its tokens (`SUPABASE_URL`): it must be yours
/// (or root's) and writable by nobody else, and so must a symlink leading to it. On a shared
/// host a `.env.prod` that another user left in /tmp, above a working directory without `.git`,
/// would otherwise be picked up by `--env prod`.
pub fn check_trusted(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let me = super::secure::euid();
    let refuse = |what: &str, md: &std::fs::Metadata| -> Result<(), String> {
        let uid = md.uid();
        let mode = md.mode() & 0o7777;
        if uid != me && uid != 0 {
            return Err(format!(
                "refusing to load the environment file {}: {what} belongs to {} (mode {mode:04o}), not to you; an env file sets the backend the gateway sends its tokens to. Use a file of your own (--env-file PATH)",
                path.display(),
                super::secure::describe_uid(uid)
            ));
        }
        if !md.file_type().is_symlink() && mode & 0o022 != 0 {
            return Err(format!(
                "refusing to load the environment file {}: {what} is writable by other users (mode {mode:04o}); an env file sets the backend the gateway sends its tokens to. Fix: chmod go-w {}",
                path.display(),
                path.display()
            ));
        }
        Ok(())
    };
    let link = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot read the environment file {}: {e}", path.display()))?;
    if link.file_type().is_symlink() {
        refuse("the symbolic link", &link)?;
    }
    let md = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the environment file {}: {e}", path.display()))?;
    refuse("it", &md)
}

/// Applies `--env`/`--env-file` (falling back to `PANORAMA_ENV`/`PANORAMA_ENV_FILE`). Returns
/// the file loaded, if any. An explicitly requested file that is missing is an error.
pub fn load_requested(
    env_name: Option<&str>,
    env_file: Option<&Path>,
) -> Result<Option<PathBuf>, String> {
    let file = env_file
        .map(Path::to_path_buf)
        .or_else(|| super::env_nonempty(&["PANORAMA_ENV_FILE"]).map(PathBuf::from));
    let path = if let Some(f) = file {
        super::absolute(&f)
    } else {
        let name = match env_name.map(String::from).or_else(|| {
            super::env_nonempty(&["PANORAMA_ENV"]).map(|v| v.to_string_lossy().into_owned())
        }) {
            Some(n) => normalize_env_name(&n)?,
            None => return Ok(None),
        };
        let cwd = std::env::current_dir()
            .map_err(|e| format!("cannot determine the working directory: {e}"))?;
        find_env_file(&cwd, &name)?
    };
    if !path.is_file() {
        return Err(format!(
            "environment file not found: {}; fix the path given to --env-file / PANORAMA_ENV_FILE",
            path.display()
        ));
    }
    check_trusted(&path)?;
    load_file(&path)?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_syntax() {
        let text = "# comment\n\nexport A=1\nB = two words # trailing\nC='lit $x \\n'\nD=\"l1\\nl2 \\\"q\\\" \\$x\"\nE=\"multi\nline\"\nF=\nG=a#b\n";
        let p = parse(Path::new(".env"), text).unwrap();
        let m: std::collections::HashMap<_, _> = p.into_iter().collect();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "lit $x \\n");
        assert_eq!(m["D"], "l1\nl2 \"q\" $x");
        assert_eq!(m["E"], "multi\nline");
        assert_eq!(m["F"], "");
        assert_eq!(m["G"], "a#b");
    }

    #[test]
    fn dotenv_errors_name_line() {
        let e = parse(Path::new("/x/.env"), "A=1\nnot a line\n").unwrap_err();
        assert!(e.starts_with("/x/.env:2:"), "{e}");
        let e = parse(Path::new("/x/.env"), "A=1\nB=\"open\n").unwrap_err();
        assert!(e.contains(":2:") && e.contains("unterminated"), "{e}");
    }

    #[test]
    fn env_files_others_can_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("pg-envtrust-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join(".env.prod");
        std::fs::write(&f, "SUPABASE_URL=https://evil.example\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_trusted(&f).is_ok());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_trusted(&f).unwrap_err();
        assert!(
            e.contains("writable by other users") && e.contains("chmod go-w"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn env_names() {
        assert_eq!(normalize_env_name("Production").unwrap(), "prod");
        assert!(normalize_env_name("bogus").is_err());
    }
}
