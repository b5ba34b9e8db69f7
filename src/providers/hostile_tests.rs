//! Every payload field of every job type that reaches a CLI (model_run, subagent_run), with
//! hostile values, through the one argv door (issue 8): each value either fails the job with
//! a message naming its field, or lands inside a `--flag=value` element, in a file, or on
//! standard input; it never becomes an option, and a restricted run never gets an elevated
//! one.

use std::path::Path;

use serde_json::{json, Value};

use super::argv::hostile_values;
use super::restrict::Layers;
use super::subplan::{SessionReport, SubagentRequest};
use super::{build_plan, subagent_plan, Flags, ProviderId};

/// Every option and fixed word the gateway writes, for any CLI.
const KNOWN: &[&str] = &[
    "--print",
    "--model",
    "--output-format",
    "--json-schema",
    "--tools",
    "--allowedTools",
    "--disallowedTools",
    "--input-format",
    "--no-session-persistence",
    "--permission-mode",
    "--setting-sources",
    "--disable-slash-commands",
    "--system-prompt",
    "--system-prompt-file",
    "--append-system-prompt",
    "--append-system-prompt-file",
    "--verbose",
    "--dangerously-skip-permissions",
    "--max-budget-usd",
    "--betas",
    "--session-id",
    "--resume",
    "exec",
    "--skip-git-repo-check",
    "--sandbox",
    "--dangerously-bypass-approvals-and-sandbox",
    "--config",
    "--json",
    "--output-schema",
    "--output-last-message",
    "--ephemeral",
    "-",
    "--approval-mode",
    "--yolo",
    "--extensions",
    "resume",
];

const IDS: [ProviderId; 3] = [ProviderId::Claude, ProviderId::Codex, ProviderId::Gemini];

fn flag_sets(id: ProviderId) -> Vec<Flags> {
    let table = id.flag_table();
    vec![
        Flags(table.iter().map(|(k, _, _)| (*k, true)).collect()),
        Flags(table.iter().map(|(k, _, _)| (*k, false)).collect()),
        Flags::detect(id, None),
    ]
}

/// Each element is a known option, alone or as `--flag=value`, or the UUID after Codex's
/// `resume`.
fn assert_safe(args: &[String], ctx: &str) {
    for (i, a) in args.iter().enumerate() {
        if i > 0 && args[i - 1] == "resume" {
            assert!(
                crate::util::is_uuid(a),
                "{ctx}: resume id {a:?} in {args:?}"
            );
            continue;
        }
        let name = a.split_once('=').map_or(a.as_str(), |(n, _)| n);
        assert!(
            KNOWN.contains(&name),
            "{ctx}: argv element {a:?} in {args:?}"
        );
        if !a.contains('=') {
            assert!(
                !hostile_values().contains(a) || KNOWN.contains(&a.as_str()),
                "{ctx}: bare hostile {a:?}"
            );
        }
    }
}

fn names_field(err: &str, field: &str, ctx: &str) {
    assert!(
        err.contains(field),
        "{ctx}: error does not name {field}: {err}"
    );
}

#[test]
fn model_run_fields_never_become_options() {
    let base = json!({"prompt": "p", "model": "claude-x", "output_format": "json",
                      "json_schema": {"type": "object"}, "append_system_prompt": "s",
                      "reasoning_effort": "high", "timeout_ms": 1000});
    let fields = [
        "prompt",
        "model",
        "append_system_prompt",
        "reasoning_effort",
        "provider",
        "output_format",
    ];
    let mut checked = 0;
    for id in IDS {
        for flags in flag_sets(id) {
            for field in fields {
                for h in hostile_values() {
                    let mut p = base.clone();
                    p[field] = Value::String(h.clone());
                    p["provider"] = json!(id.as_str());
                    if field == "provider" {
                        p["provider"] = Value::String(h.clone());
                        p["model"] = json!(match id {
                            ProviderId::Claude => "claude-x",
                            ProviderId::Codex => "gpt-5",
                            ProviderId::Gemini => "gemini-x",
                        });
                    }
                    let ctx = format!("{id:?} {field}={h:?}");
                    let (pid, mut req) = match crate::jobs::model_run::ModelRunPayload::parse(&p) {
                        Ok(x) => (x.provider, x.request),
                        // Empty prompt/model: refused before any argv exists.
                        Err(o) => {
                            assert!(h.is_empty(), "{ctx}: {o:?}");
                            continue;
                        }
                    };
                    if pid == ProviderId::Codex {
                        super::codex::prepare(&mut req);
                    }
                    checked += 1;
                    match build_plan(pid, &req, Path::new("cli"), &flags) {
                        Err(e) => names_field(&e.0, field, &ctx),
                        Ok(plan) => {
                            assert_safe(&plan.args, &ctx);
                            if field == "prompt" {
                                let stdin = String::from_utf8(plan.stdin).unwrap();
                                assert!(stdin.starts_with(&h), "{ctx}: stdin {stdin:?}");
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 500, "{checked}");
    // The schema: JSON text inside `--json-schema=…` or a file, NUL refused.
    let p = json!({"prompt": "p", "model": "claude-x",
                   "json_schema": {"type": "object", "description": "x\0--mcp-config={}"}});
    let job = crate::jobs::model_run::ModelRunPayload::parse(&p).unwrap();
    let (id, req) = (job.provider, job.request);
    let flags = &flag_sets(id)[0];
    // serde_json escapes NUL as \u0000: the argument carries no NUL and stays one element.
    let plan = build_plan(id, &req, Path::new("cli"), flags).unwrap();
    assert_safe(&plan.args, "schema");
}

fn sub_base() -> Value {
    json!({"output_format": "json", "allowed_tools": ["WebSearch"], "permission_mode": "dontAsk",
           "append_system_prompt": "a", "system_prompt": "s", "json_schema": {"type": "object"},
           "model": "m-1", "max_budget_usd": 1, "input_format": "text", "betas": ["b-1"],
           "no_session_persistence": true,
           "session_id": "0b7c0000-0000-4000-8000-000000000001",
           "reasoning_effort": "high", "extensions": ["e1"], "disallowed_tools": ["Bash"],
           "timeout_ms": 1000})
}

#[test]
fn subagent_run_fields_never_become_options() {
    let fields = [
        "input.prompt",
        "metadata.session_id",
        "config.model",
        "config.allowed_tools",
        "config.disallowed_tools",
        "config.append_system_prompt",
        "config.system_prompt",
        "config.json_schema",
        "config.permission_mode",
        "config.max_budget_usd",
        "config.input_format",
        "config.betas",
        "config.session_id",
        "config.resume_session_id",
        "config.reasoning_effort",
        "config.extensions",
        "config.output_format",
        "config.timeout_ms",
    ];
    let mut checked = 0;
    for id in IDS {
        for flags in flag_sets(id) {
            for full in [false, true] {
                for field in fields {
                    for h in hostile_values() {
                        let ctx = format!("{id:?} full={full} {field}={h:?}");
                        let mut config = sub_base();
                        let mut prompt = "p".to_string();
                        let mut resume_meta = None;
                        match field.split_once('.') {
                            Some(("input", _)) => prompt = h.clone(),
                            Some(("metadata", _)) => resume_meta = Some(h.clone()),
                            Some((_, k)) => {
                                // Lists get the hostile value as an item and as a string.
                                config[k] =
                                    if k.ends_with("tools") || k == "betas" || k == "extensions" {
                                        json!(["ok", h])
                                    } else {
                                        Value::String(h.clone())
                                    };
                            }
                            None => unreachable!(),
                        }
                        checked += 1;
                        let req = SubagentRequest::from_config(
                            &config,
                            &prompt,
                            full,
                            resume_meta.as_deref(),
                        );
                        let layers = Layers {
                            resource: full,
                            team: full,
                            install: full,
                        };
                        let plan = req
                            .map_err(String::from)
                            .and_then(|r| subagent_plan(id, &r, &layers, Path::new("cli"), &flags));
                        match plan {
                            Err(e) => {
                                if !e.contains("does not support session continuation") {
                                    names_field(&e, field, &ctx);
                                }
                            }
                            Ok(plan) => {
                                assert_safe(&plan.args, &ctx);
                                if !full {
                                    super::restrict::check_argv(&plan.args).unwrap();
                                }
                                if field == "input.prompt" {
                                    let stdin = String::from_utf8(plan.stdin).unwrap();
                                    assert!(stdin.starts_with(&h), "{ctx}: {stdin:?}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 2000, "{checked}");
}

#[test]
fn restricted_runs_refuse_every_elevated_ask_for_every_cli() {
    let layers = Layers {
        resource: false,
        team: true,
        install: true,
    };
    for id in IDS {
        for (k, v) in [
            ("permission_mode", json!("bypassPermissions")),
            ("permission_mode", json!("acceptEdits")),
            ("allowed_tools", json!(["Bash"])),
            ("allowed_tools", json!("WebSearch,Write")),
            ("allowed_tools", json!(["Edit"])),
        ] {
            let mut c = sub_base();
            c[k] = v.clone();
            let r = SubagentRequest::from_config(&c, "p", false, None).unwrap();
            let e =
                subagent_plan(id, &r, &layers, Path::new("cli"), &flag_sets(id)[0]).unwrap_err();
            assert!(e.contains(&format!("config.{k}")), "{id:?} {k}={v}: {e}");
            assert!(e.contains("config.full_control is not true"), "{e}");
        }
        // The same config with machine control on all three layers runs elevated.
        let mut c = sub_base();
        c["permission_mode"] = json!("bypassPermissions");
        c["allowed_tools"] = json!(["Bash", "Write"]);
        let r = SubagentRequest::from_config(&c, "p", true, None).unwrap();
        let all = Layers {
            resource: true,
            team: true,
            install: true,
        };
        let plan = subagent_plan(id, &r, &all, Path::new("cli"), &flag_sets(id)[0]).unwrap();
        assert!(super::restrict::check_argv(&plan.args).is_err(), "{id:?}");
    }
}

#[test]
fn subagent_argv_per_cli_restricted_and_full() {
    let cfg = json!({"output_format": "json", "full_control": false, "allowed_tools": ["WebSearch"],
               "permission_mode": "dontAsk",
               "append_system_prompt": "You cannot write or interact with files in this environment. Include a brief summary."});
    let all = |id: ProviderId| flag_sets(id).remove(0);
    let plan = |id, full, resume: Option<&str>, f: &Flags| {
        let r = SubagentRequest::from_config(&cfg, "hi", full, resume)?;
        let l = Layers {
            resource: full,
            team: full,
            install: full,
        };
        subagent_plan(id, &r, &l, Path::new("cli"), f)
    };
    let mut f = all(ProviderId::Claude);
    // Without the file flags the system prompt is an `=` argument.
    f.0.retain(|(k, _)| !k.ends_with("FileFlag"));
    let p = plan(ProviderId::Claude, false, None, &f).unwrap();
    assert_eq!(
        p.args,
        [
            "--print", "--output-format=stream-json", "--verbose", "--allowedTools=WebSearch",
            "--append-system-prompt=You cannot write or interact with files in this environment. Include a brief summary.",
            "--permission-mode=dontAsk", "--setting-sources=local",
            "--disable-slash-commands",
        ]
    );
    assert_eq!(p.stdin, b"hi");
    let p = plan(ProviderId::Claude, true, None, &f).unwrap();
    assert_eq!(
        p.args,
        [
            "--print",
            "--output-format=stream-json",
            "--verbose",
            "--permission-mode=bypassPermissions",
            "--dangerously-skip-permissions",
        ]
    );
    // With the file flag, the appended prompt goes in an owner-only file.
    let p = plan(ProviderId::Claude, false, None, &all(ProviderId::Claude)).unwrap();
    assert!(p
        .args
        .contains(&"--append-system-prompt-file=append-system-prompt.md".to_string()));
    assert_eq!(p.files[0].0, "append-system-prompt.md");
    let id = "0b7c0000-0000-4000-8000-000000000001";
    let p = plan(ProviderId::Claude, false, Some(id), &f).unwrap();
    assert!(p.args.contains(&format!("--resume={id}")));
    let e = plan(ProviderId::Claude, false, Some("abc"), &f).unwrap_err();
    assert!(
        e.starts_with("Invalid metadata.session_id \"abc\": it must be a UUID"),
        "{e}"
    );
    let mut no_resume = f.clone();
    no_resume.0.retain(|(k, _)| *k != "resumeFlag");
    let e = plan(ProviderId::Claude, false, Some(id), &no_resume).unwrap_err();
    assert!(e.contains("--resume"), "{e}");

    let p = plan(ProviderId::Codex, true, None, &all(ProviderId::Codex)).unwrap();
    assert_eq!(
        p.args,
        [
            "exec",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
            "--config=model_reasoning_effort=\"high\"",
            "--config=features.shell_tool=true",
            // Codex 0.171's setting (CLIs with --ephemeral). No --ephemeral: a subagent's
            // session is kept for its continuations (`codex exec resume`).
            "--config=web_search=\"live\"",
            "--json",
            "-"
        ]
    );
    assert_eq!(p.session, SessionReport::Printed);
    let p = plan(ProviderId::Codex, false, None, &all(ProviderId::Codex)).unwrap();
    assert_eq!(p.args[2], "--sandbox=read-only");
    assert!(String::from_utf8(p.stdin)
        .unwrap()
        .starts_with("hi\n\nYou cannot write"));
    let g = all(ProviderId::Gemini);
    let p = plan(ProviderId::Gemini, false, None, &g).unwrap();
    // No --sandbox (it needs a container runtime); plan mode in a trusted folder; a new
    // session of the gateway's naming.
    assert_eq!(
        p.args[..2],
        ["--output-format=json", "--approval-mode=plan"]
    );
    let sid = p.args[2].strip_prefix("--session-id=").unwrap();
    assert!(crate::util::is_rfc4122_uuid(sid), "{:?}", p.args);
    assert_eq!(p.args.len(), 3);
    assert_eq!(p.session, SessionReport::Known(sid.to_string()));
    assert!(p
        .env
        .contains(&("GEMINI_CLI_TRUST_WORKSPACE".into(), "true".into())));
    assert_eq!(p.stdin, b"hi");
    let p = plan(ProviderId::Gemini, true, None, &g).unwrap();
    assert_eq!(
        p.args[..2],
        ["--output-format=json", "--approval-mode=yolo"]
    );
}

#[test]
fn continuations_resume_by_id_for_every_cli() {
    let cfg = json!({"output_format": "json", "allowed_tools": ["WebSearch"],
                     "append_system_prompt": "a"});
    let layers = Layers {
        resource: false,
        team: false,
        install: false,
    };
    let plan = |id, cfg: &Value, resume: Option<&str>, f: &Flags| {
        let r = SubagentRequest::from_config(cfg, "go on", false, resume)?;
        subagent_plan(id, &r, &layers, Path::new("cli"), f)
    };
    let all = |id: ProviderId| flag_sets(id).remove(0);
    let without = |id: ProviderId, key: &str| {
        let mut f = all(id);
        f.0.retain(|(k, _)| *k != key);
        f
    };
    // Codex thread ids are version-7 UUIDs.
    let thread = "01a24385-2906-7721-97c3-d49ef42cd31d";
    let p = plan(
        ProviderId::Codex,
        &cfg,
        Some(thread),
        &all(ProviderId::Codex),
    )
    .unwrap();
    assert_eq!(
        p.args,
        [
            "exec",
            "--skip-git-repo-check",
            "--sandbox=read-only",
            "--config=model_reasoning_effort=\"high\"",
            "--config=features.shell_tool=false",
            "--config=web_search=\"live\"",
            "--json",
            "resume",
            thread,
            "-"
        ]
    );
    assert_eq!(p.session, SessionReport::Known(thread.into()));
    super::restrict::check_argv(&p.args).unwrap();
    let e = plan(
        ProviderId::Codex,
        &cfg,
        Some(thread),
        &without(ProviderId::Codex, "resumeCommand"),
    )
    .unwrap_err();
    assert!(
        e.contains("`codex exec resume`") && e.contains("Update Codex"),
        "{e}"
    );
    // A subagent that asked for no session: ephemeral, nothing reported.
    let mut no_session = cfg.clone();
    no_session["no_session_persistence"] = json!(true);
    let p = plan(
        ProviderId::Codex,
        &no_session,
        None,
        &all(ProviderId::Codex),
    )
    .unwrap();
    assert!(p.args.contains(&"--ephemeral".to_string()), "{:?}", p.args);
    assert_eq!(p.session, SessionReport::Output);

    let g = all(ProviderId::Gemini);
    let p = plan(ProviderId::Gemini, &cfg, Some(thread), &g).unwrap();
    assert_eq!(
        p.args,
        [
            "--output-format=json",
            "--approval-mode=plan",
            &format!("--resume={thread}")
        ]
    );
    assert_eq!(p.session, SessionReport::Known(thread.into()));
    let e = plan(
        ProviderId::Gemini,
        &cfg,
        Some(thread),
        &without(ProviderId::Gemini, "resumeFlag"),
    )
    .unwrap_err();
    assert!(
        e.contains("`--resume`") && e.contains("Update Gemini CLI"),
        "{e}"
    );
    // config.session_id names a first run's session.
    let mut named = cfg.clone();
    named["session_id"] = json!(thread);
    let p = plan(ProviderId::Gemini, &named, None, &g).unwrap();
    assert_eq!(p.args[2], format!("--session-id={thread}"));
    // A job-given session is never the one removed after a run that keeps none: it may be
    // another subagent's or the user's own. The run gets a fresh id of its own instead.
    named["no_session_persistence"] = json!(true);
    let p = plan(ProviderId::Gemini, &named, None, &g).unwrap();
    let SessionReport::Discard(own) = &p.session else {
        panic!("{:?}", p.session)
    };
    assert_ne!(own, thread);
    assert!(crate::util::is_uuid(own));
    assert_eq!(p.args[2], format!("--session-id={own}"));
    assert!(!p.args.iter().any(|a| a.contains(thread)), "{:?}", p.args);
    // Without --session-id the id is read from the output.
    let p = plan(
        ProviderId::Gemini,
        &cfg,
        None,
        &without(ProviderId::Gemini, "sessionIdFlag"),
    )
    .unwrap();
    assert_eq!(p.session, SessionReport::Printed);
    assert_eq!(p.args.len(), 2);

    // Hostile resume ids fail naming the field, for every CLI, and never reach the argv.
    for id in IDS {
        for h in hostile_values().into_iter().chain([
            "0b7c0000-0000-4000-8000-00000000000Z".to_string(),
            format!("{thread}\n--yolo"),
            format!("-{}", &thread[1..]),
        ]) {
            if h.trim().is_empty() {
                continue;
            }
            let e = plan(id, &cfg, Some(&h), &all(id)).unwrap_err();
            assert!(
                e.contains("Invalid metadata.session_id"),
                "{id:?} {h:?}: {e}"
            );
            let mut c = cfg.clone();
            c["resume_session_id"] = json!(h);
            let e = plan(id, &c, None, &all(id)).unwrap_err();
            assert!(
                e.contains("Invalid config.resume_session_id"),
                "{id:?} {h:?}: {e}"
            );
        }
    }
}

#[test]
fn a_completed_run_reports_the_session_it_printed() {
    use super::subplan::SubPlan;
    let plan = |session| SubPlan {
        command: "cli".into(),
        args: Vec::new(),
        stdin: Vec::new(),
        files: Vec::new(),
        env: Vec::new(),
        path_prepend: Vec::new(),
        format: super::subplan::Format::Json,
        timeout: std::time::Duration::from_secs(1),
        session,
    };
    let t = "01a24385-2906-7721-97c3-d49ef42cd31d";
    let jsonl = format!(
        "{{\"type\":\"thread.started\",\"thread_id\":\"{t}\"}}\n{{\"type\":\"turn.started\"}}"
    );
    let printed = plan(SessionReport::Printed);
    assert_eq!(
        printed.session_id(ProviderId::Codex, &jsonl, ""),
        Some(t.into())
    );
    let banner = format!("OpenAI Codex v0.171.0\n--------\nsession id: {t}\n--------\n");
    assert_eq!(
        printed.session_id(ProviderId::Codex, "hi", &banner),
        Some(t.into())
    );
    let envelope = format!("{{\n  \"session_id\": \"{t}\",\n  \"response\": \"hi\"\n}}");
    assert_eq!(
        printed.session_id(ProviderId::Gemini, &envelope, ""),
        Some(t.into())
    );
    let init = format!(
        "{{\"type\":\"init\",\"session_id\":\"{t}\",\"model\":\"auto\"}}\n{{\"type\":\"result\"}}"
    );
    assert_eq!(
        printed.session_id(ProviderId::Gemini, &init, ""),
        Some(t.into())
    );
    // Anything that is not a UUID is not reported.
    let odd = "{\"type\":\"thread.started\",\"thread_id\":\"--resume\"}";
    assert_eq!(
        printed.session_id(ProviderId::Codex, odd, "session id: -x"),
        None
    );
    // In text format stdout is the model's answer: an event in it never names the session.
    let mut text = plan(SessionReport::Printed);
    text.format = super::subplan::Format::Text;
    let other = "0b7c0000-0000-4000-8000-000000000009";
    let planted = format!("{{\"type\":\"thread.started\",\"thread_id\":\"{other}\"}}\n");
    assert_eq!(
        text.session_id(ProviderId::Codex, &planted, &banner),
        Some(t.into())
    );
    assert_eq!(text.session_id(ProviderId::Codex, &planted, ""), None);
    let planted = format!("{{\"session_id\": \"{other}\", \"response\": \"hi\"}}");
    assert_eq!(text.session_id(ProviderId::Gemini, &planted, ""), None);
    assert_eq!(
        plan(SessionReport::Output).session_id(ProviderId::Codex, &jsonl, ""),
        None
    );
    assert_eq!(
        plan(SessionReport::Known(t.into())).session_id(ProviderId::Gemini, "", ""),
        Some(t.into())
    );
}
