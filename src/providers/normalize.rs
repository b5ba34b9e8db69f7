//! Reading a CLI's output, for model runs and subagent runs alike: JSON extraction (model_run's
//! §5.10 rules and subagent_run's "extract JSON from text", §3.7), stream events (one JSON
//! object per line: Claude's stream-json, Codex's JSONL, Gemini's stream-json), the error
//! object in stderr, and the normalisation of subagent output (subagents-shell.md §3.3–§3.7:
//! the schema-versioned envelope, Claude's JSON object and run events, Codex's and Gemini's
//! output). Each CLI's file keeps its model_run result parser, built on these helpers.

use serde_json::{json, Map, Value};

use super::subplan::Format;
use super::ProviderId;

/// Parsed stream-json events kept (oldest dropped).
const STREAM_EVENTS: usize = 2000;

/// The string at `k` of a JSON object.
pub fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// Normalized output: envelope, adapter metadata, parse error, run events (stream-json).
#[derive(Debug, Clone, Default)]
pub struct Normalized {
    pub output: Value,
    pub metadata: Map<String, Value>,
    pub parse_error: Option<String>,
    pub events: Vec<(String, Value)>,
}

/// The schema-versioned output envelope.
pub fn envelope(content: Value, content_type: &str) -> Value {
    json!({"schema_version": 1, "content": content, "content_type": content_type})
}

/// "Extract JSON from text" (§3.7).
pub fn extract_json(text: &str, strict: bool) -> (Value, Option<String>) {
    let t = text.trim();
    let (candidate, looks) = if let Some(start) = t.find("```") {
        let after = &t[start + 3..];
        let after = after.strip_prefix("json").unwrap_or(after);
        match after.find("```") {
            Some(end) => (after[..end].trim().to_string(), true),
            None => (after.trim().to_string(), true),
        }
    } else if let (Some(a), Some(b)) = (t.find('{'), t.rfind('}')) {
        if a < b {
            (t[a..=b].to_string(), true)
        } else {
            (t.to_string(), false)
        }
    } else if let (Some(a), Some(b)) = (t.find('['), t.rfind(']')) {
        if a < b {
            (t[a..=b].to_string(), true)
        } else {
            (t.to_string(), false)
        }
    } else {
        (t.to_string(), t.starts_with('{') || t.starts_with('['))
    };
    match serde_json::from_str::<Value>(&candidate) {
        Ok(v) => (envelope(v, "json"), None),
        Err(_) if strict || looks => (
            envelope(json!(t), "markdown"),
            Some("Failed to parse JSON output".into()),
        ),
        Err(_) => (envelope(json!(t), "markdown"), None),
    }
}

/// Removes a leading ``` (with an optional `json` tag) and a trailing ```, then trims.
pub fn strip_fence(text: &str) -> String {
    let t = text.trim();
    if !t.starts_with("```") {
        return t.to_string();
    }
    let mut body = &t[3..];
    // `get` (not indexing): the tag position may fall inside a multi-byte character.
    if body
        .get(..4)
        .is_some_and(|tag| tag.eq_ignore_ascii_case("json"))
    {
        body = &body[4..];
    }
    let body = body.trim_end();
    let body = body.strip_suffix("```").unwrap_or(body);
    body.trim().to_string()
}

pub fn parse_object(s: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// A JSON object from model text (providers.md §5.10): the whole text, else the first line
/// that is an object, else the span from the first `{` to the last `}`.
pub fn extract_object(text: &str, strip: bool) -> Option<Map<String, Value>> {
    extract_with(text, strip, parse_object)
}

/// [`extract_object`] with another parser of the candidate texts (it gets the exact text that
/// is tried, for callers that need more than the parsed map, such as document key order).
pub fn extract_with<T>(text: &str, strip: bool, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    let t = if strip {
        strip_fence(text)
    } else {
        text.trim().to_string()
    };
    if let Some(m) = parse(&t) {
        return Some(m);
    }
    for line in t.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(m) = parse(line) {
            return Some(m);
        }
    }
    let (a, b) = (t.find('{')?, t.rfind('}')?);
    if a < b {
        return parse(&t[a..=b]);
    }
    None
}

/// The first balanced `{…}` in `text` (outside double-quoted strings) that parses as an
/// object; OpenAI-style `{"error":{…}}` gives its `message`, `type`, `code`, `param`.
pub fn error_summary(text: &str) -> Option<Value> {
    let b = text.as_bytes();
    let mut start = 0;
    while let Some(off) = text[start..].find('{') {
        let s = start + off;
        let mut depth = 0i32;
        let mut in_str = false;
        let mut esc = false;
        let mut end = None;
        for (i, &c) in b.iter().enumerate().skip(s) {
            if in_str {
                if esc {
                    esc = false;
                } else if c == b'\\' {
                    esc = true;
                } else if c == b'"' {
                    in_str = false;
                }
                continue;
            }
            match c {
                b'"' => in_str = true,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        if let Some(e) = end {
            if let Some(obj) = parse_object(&text[s..=e]) {
                let (src, keys): (&Map<String, Value>, &[&str]) = match obj.get("error") {
                    Some(Value::Object(inner)) => (inner, &["message", "type", "code", "param"]),
                    _ => (&obj, &["message", "type", "code"]),
                };
                let mut out = Map::new();
                for k in keys {
                    if let Some(Value::String(v)) = src.get(*k) {
                        out.insert((*k).to_string(), Value::String(v.clone()));
                    }
                }
                return Some(Value::Object(out));
            }
        }
        start = s + 1;
    }
    None
}

/// The JSON objects of output that prints one event per line (stream-json, JSONL), in order;
/// other lines are skipped.
pub fn stream_events(stdout: &str) -> impl DoubleEndedIterator<Item = Map<String, Value>> + '_ {
    stdout.lines().filter_map(parse_object)
}

/// The last event of type `kind` (Claude's `result`, say) in stream output.
pub fn last_event(stdout: &str, kind: &str) -> Option<Map<String, Value>> {
    stream_events(stdout)
        .rev()
        .find(|e| e.get("type").and_then(Value::as_str) == Some(kind))
}

/// Codex JSONL: the `item` of an `item.completed` event whose item is an agent message.
fn codex_agent_message(ev: &Value) -> Option<&Value> {
    if s(ev, "type") != Some("item.completed") {
        return None;
    }
    ev.get("item")
        .filter(|i| s(i, "type") == Some("agent_message"))
}

/// Codex JSONL as a model run reads it (providers.md §5.10): the text of the last agent message
/// that has one, and the last `turn.completed` usage that is an object (else null).
pub fn codex_answer(stdout: &str) -> (Option<String>, Value) {
    let mut last = None;
    let mut usage = Value::Null;
    for ev in stream_events(stdout).map(Value::Object) {
        if let Some(t) = codex_agent_message(&ev).and_then(|i| s(i, "text")) {
            last = Some(t.to_string());
        } else if s(&ev, "type") == Some("turn.completed") {
            if let Some(u) = ev.get("usage").filter(|u| u.is_object()) {
                usage = u.clone();
            }
        }
    }
    (last, usage)
}

fn summary_sources(env: &mut Value, from: &Map<String, Value>) {
    if let Some(sm) = from
        .get("summary")
        .or_else(|| from.get("overview"))
        .and_then(Value::as_str)
    {
        env["summary"] = json!(sm);
    }
    if let Some(Value::Array(src)) = from.get("sources") {
        if src.iter().all(Value::is_string) {
            env["sources"] = Value::Array(src.clone());
        }
    }
}

fn claude_object(o: &Map<String, Value>) -> Normalized {
    let mut md = Map::new();
    md.insert("adapter_id".into(), json!("claude_code"));
    for (k, src) in [
        ("session_id", "session_id"),
        ("total_cost_usd", "total_cost_usd"),
        ("usage", "usage"),
        ("model_usage", "modelUsage"),
        ("permission_denials", "permission_denials"),
    ] {
        if let Some(v) = o.get(src) {
            if k != "total_cost_usd" || v.is_number() {
                md.insert(k.into(), v.clone());
            }
        }
    }
    let output = if let Some(Value::Object(so)) = o.get("structured_output") {
        let mut e = envelope(Value::Object(so.clone()), "json");
        summary_sources(&mut e, so);
        e
    } else if let Some(Value::String(r)) = o.get("result") {
        let mut e = envelope(json!(r), "markdown");
        summary_sources(&mut e, o);
        e
    } else if let Some(r) = o.get("result").filter(|r| !r.is_null()) {
        if r.is_object() {
            envelope(r.clone(), "json")
        } else {
            envelope(json!(r.to_string()), "text")
        }
    } else {
        envelope(Value::Object(o.clone()), "json")
    };
    Normalized {
        output,
        metadata: md,
        parse_error: None,
        events: Vec::new(),
    }
}

/// The stream events a subagent run keeps (the last [`STREAM_EVENTS`]).
fn stream_lines(stdout: &str) -> Vec<Value> {
    let mut v: Vec<Value> = stream_events(stdout).map(Value::Object).collect();
    if v.len() > STREAM_EVENTS {
        v.drain(..v.len() - STREAM_EVENTS);
    }
    v
}

fn text_of_content(c: &Value) -> String {
    match c {
        Value::String(x) => x.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| s(p, "type").is_none_or(|t| t == "text"))
            .filter_map(|p| s(p, "text"))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// `key` of the last event of type `kind`, if that event has it.
fn last_field<'a>(evs: &'a [Value], kind: &str, key: &str) -> Option<&'a Value> {
    evs.iter()
        .rev()
        .find(|e| s(e, "type") == Some(kind))
        .and_then(|e| e.get(key))
}

/// Claude stream events → run events (§3.3).
fn claude_events(events: &[Value]) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut msg_index: Vec<(String, usize)> = Vec::new();
    let mut tools: Vec<(String, String)> = Vec::new();
    let mut results_seen: Vec<String> = Vec::new();
    for ev in events {
        let mid = ev.get("message").and_then(|m| s(m, "id")).map(String::from);
        let parts = ev
            .get("message")
            .and_then(|m| m.get("content"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match s(ev, "type") {
            Some("assistant") => {
                let text: String = parts
                    .iter()
                    .filter(|p| s(p, "type") == Some("text"))
                    .filter_map(|p| s(p, "text"))
                    .collect::<Vec<_>>()
                    .join("");
                let text = text.trim_end().to_string();
                if !text.is_empty() {
                    let m = ev.get("message").cloned().unwrap_or(json!({}));
                    let mut payload = json!({"role": "assistant", "content": text});
                    for k in ["model", "stop_reason"] {
                        if let Some(v) = m.get(k).filter(|v| !v.is_null()) {
                            payload[k] = v.clone();
                        }
                    }
                    if let Some(id) = &mid {
                        payload["message_id"] = json!(id);
                    }
                    match mid
                        .as_ref()
                        .and_then(|id| msg_index.iter().find(|(k, _)| k == id))
                    {
                        Some((_, i)) => out[*i] = ("message".into(), payload),
                        None => {
                            if let Some(id) = &mid {
                                msg_index.push((id.clone(), out.len()));
                            }
                            out.push(("message".into(), payload));
                        }
                    }
                }
                for p in parts.iter().filter(|p| s(p, "type") == Some("tool_use")) {
                    let id = s(p, "id").unwrap_or("").to_string();
                    if tools.iter().any(|(k, _)| *k == id) {
                        continue;
                    }
                    let name = s(p, "name").unwrap_or("").to_string();
                    tools.push((id.clone(), name.clone()));
                    let input = p.get("input").cloned().unwrap_or(Value::Null);
                    let summary = if let Some(q) = s(&input, "query") {
                        json!(format!("Query: {q}"))
                    } else if let Some(t) = s(&input, "text") {
                        json!(t)
                    } else if let Value::String(x) = &input {
                        json!(x)
                    } else {
                        Value::Null
                    };
                    out.push((
                        "tool_call".into(),
                        json!({"tool_name": name, "tool_use_id": id, "tool_input": input, "summary": summary, "message_id": mid}),
                    ));
                }
            }
            Some("user") => {
                for p in parts.iter().filter(|p| s(p, "type") == Some("tool_result")) {
                    let id = s(p, "tool_use_id").unwrap_or("").to_string();
                    if results_seen.contains(&id) {
                        continue;
                    }
                    let content = match p.get("content") {
                        Some(Value::String(x)) => x.trim_end().to_string(),
                        Some(v) if !v.is_null() => serde_json::to_string_pretty(v)
                            .unwrap_or_default()
                            .trim_end()
                            .to_string(),
                        _ => String::new(),
                    };
                    if content.is_empty() {
                        continue;
                    }
                    results_seen.push(id.clone());
                    let name = tools.iter().find(|(k, _)| *k == id).map(|(_, n)| n.clone());
                    out.push((
                        "tool_result".into(),
                        json!({"tool_use_id": id, "tool_name": name, "content": content,
                               "is_error": p.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                               "message_id": mid}),
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

pub fn normalize(provider: ProviderId, format: Format, stdout: &str) -> Normalized {
    let adapter = match provider {
        ProviderId::Claude => "claude_code",
        ProviderId::Codex => "codex",
        ProviderId::Gemini => "gemini",
    };
    let mut base_md = Map::new();
    base_md.insert("adapter_id".into(), json!(adapter));
    // Claude text and JSON runs stream too (to see connection retries as they happen): their
    // answer is the last result event, the same envelope `json` prints.
    if provider == ProviderId::Claude
        && format != Format::StreamJson
        && super::claude::is_stream(stdout)
    {
        if let Some(r) = last_event(stdout, "result") {
            if format == Format::Text {
                let text = r.get("result").and_then(Value::as_str).unwrap_or("");
                return Normalized {
                    output: envelope(json!(text.trim()), "text"),
                    ..text_out(stdout, &base_md)
                };
            }
            return claude_object(&r);
        }
    }
    if format == Format::Text {
        return text_out(stdout, &base_md);
    }
    match provider {
        ProviderId::Claude => claude(format, stdout, base_md),
        ProviderId::Codex => codex(format, stdout, base_md),
        ProviderId::Gemini => gemini(format, stdout, base_md),
    }
}

/// The run's stdout as a text envelope.
fn text_out(stdout: &str, base_md: &Map<String, Value>) -> Normalized {
    Normalized {
        output: envelope(json!(stdout.trim()), "text"),
        metadata: base_md.clone(),
        parse_error: None,
        events: Vec::new(),
    }
}

/// Claude's output in `format` (not text).
fn claude(format: Format, stdout: &str, base_md: Map<String, Value>) -> Normalized {
    if format == Format::StreamJson {
        let evs = stream_lines(stdout);
        let events = claude_events(&evs);
        if let Some(Value::Object(r)) = evs.iter().rev().find(|e| s(e, "type") == Some("result")) {
            let mut n = claude_object(r);
            n.events = events;
            return n;
        }
        let mut md = base_md.clone();
        for e in &evs {
            for k in ["session_id", "total_cost_usd", "usage"] {
                if let Some(v) = e.get(k) {
                    md.insert(k.into(), v.clone());
                }
            }
        }
        let last = evs
            .last()
            .map(|e| {
                ["content", "message", "result", "output"]
                    .iter()
                    .find_map(|k| e.get(*k).and_then(Value::as_str).map(String::from))
                    .unwrap_or_else(|| {
                        text_of_content(
                            e.get("message")
                                .and_then(|m| m.get("content"))
                                .unwrap_or(&Value::Null),
                        )
                    })
            })
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| stdout.trim().to_string());
        return Normalized {
            output: envelope(json!(last), "markdown"),
            metadata: md,
            parse_error: None,
            events,
        };
    }
    match serde_json::from_str::<Value>(stdout.trim()) {
        Ok(Value::Object(o)) => claude_object(&o),
        Ok(_) => Normalized {
            parse_error: Some("Claude output is not a JSON object".into()),
            ..text_out(stdout, &base_md)
        },
        Err(e) => Normalized {
            parse_error: Some(e.to_string()),
            ..text_out(stdout, &base_md)
        },
    }
}

/// Codex's output in `format` (not text).
fn codex(format: Format, stdout: &str, base_md: Map<String, Value>) -> Normalized {
    if format == Format::Json {
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(stdout.trim()) {
            return Normalized {
                output: envelope(v, "json"),
                metadata: base_md,
                parse_error: None,
                events: Vec::new(),
            };
        }
    }
    let evs = stream_lines(stdout);
    if evs.is_empty() {
        let err = serde_json::from_str::<Value>(stdout.trim())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "Codex output is not JSON".into());
        return Normalized {
            parse_error: Some(err),
            ..text_out(stdout, &base_md)
        };
    }
    // The last agent message's text (not the last that has one, as a model run reads it).
    let text = evs
        .iter()
        .rev()
        .find_map(codex_agent_message)
        .and_then(|i| s(i, "text").map(String::from))
        .unwrap_or_else(|| stdout.to_string());
    let (output, perr) = extract_json(&text, false);
    let mut md = base_md;
    if let Some(u) = last_field(&evs, "turn.completed", "usage") {
        md.insert("usage".into(), u.clone());
    }
    let events = evs
        .iter()
        .filter(|e| s(e, "type") == Some("item.completed"))
        .filter_map(|e| {
            let item = e.get("item")?;
            let content = s(item, "text")?;
            match s(item, "type") {
                Some("agent_message") => Some((
                    "message".to_string(),
                    json!({"role": "assistant", "content": content}),
                )),
                Some("reasoning") => Some((
                    "message".to_string(),
                    json!({"role": "assistant", "content": content, "kind": "reasoning"}),
                )),
                _ => None,
            }
        })
        .collect();
    Normalized {
        output,
        metadata: md,
        parse_error: perr,
        events: if format == Format::StreamJson {
            events
        } else {
            Vec::new()
        },
    }
}

/// Gemini's output in `format` (not text).
fn gemini(format: Format, stdout: &str, base_md: Map<String, Value>) -> Normalized {
    if format == Format::StreamJson {
        let evs = stream_lines(stdout);
        let msgs: Vec<(String, Value)> = evs
            .iter()
            .filter(|e| s(e, "type") == Some("message"))
            .filter_map(|e| {
                Some((
                    "message".to_string(),
                    json!({"role": s(e, "role")?, "content": s(e, "content")?}),
                ))
            })
            .collect();
        let text: String = evs
            .iter()
            .filter(|e| s(e, "type") == Some("message") && s(e, "role") == Some("assistant"))
            .filter_map(|e| s(e, "content"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("");
        let text = if text.is_empty() {
            stdout.to_string()
        } else {
            text
        };
        let (output, perr) = extract_json(&text, false);
        let mut md = base_md;
        if let Some(st) = last_field(&evs, "result", "stats") {
            md.insert("usage".into(), st.clone());
        }
        return Normalized {
            output,
            metadata: md,
            parse_error: perr,
            events: msgs,
        };
    }
    match serde_json::from_str::<Value>(stdout.trim()) {
        Ok(o) if o.get("response").is_some_and(Value::is_string) => {
            let (output, perr) = extract_json(o["response"].as_str().unwrap_or_default(), false);
            Normalized {
                output,
                metadata: base_md,
                parse_error: perr,
                events: Vec::new(),
            }
        }
        Ok(_) => Normalized {
            parse_error: Some("Gemini output has no string response field".into()),
            ..text_out(stdout, &base_md)
        },
        Err(e) => Normalized {
            parse_error: Some(e.to_string()),
            ..text_out(stdout, &base_md)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_tries_whole_lines_then_braces() {
        assert_eq!(
            extract_object(r#" {"a":1} "#, false),
            json!({"a":1}).as_object().cloned()
        );
        assert_eq!(
            extract_object("noise\n{\"b\":2}\nmore", false),
            json!({"b":2}).as_object().cloned()
        );
        assert_eq!(
            extract_object("Here: {\"c\": {\"d\": 3}} done", false),
            json!({"c":{"d":3}}).as_object().cloned()
        );
        assert_eq!(
            extract_object("```json\n{\"e\":5}\n```", true),
            json!({"e":5}).as_object().cloned()
        );
        assert_eq!(extract_object("[1,2]", false), None);
        assert_eq!(extract_object("", false), None);
    }

    #[test]
    fn fence_stripping_is_safe_on_any_text() {
        // A fence followed by a multi-byte character used to slice inside it and panic.
        assert_eq!(strip_fence("```日本\n{}\n```"), "日本\n{}");
        assert_eq!(strip_fence("```é"), "é");
        assert_eq!(strip_fence("```JSON\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(strip_fence("```\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(strip_fence("  no fence  "), "no fence");
        assert_eq!(
            extract_object("```日本\n{\"k\":\"v\"}\n```", true),
            json!({"k":"v"}).as_object().cloned()
        );
    }

    #[test]
    fn error_summary_reads_openai_style_errors() {
        let s = "ERROR: stream error: {\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\",\"param\":null}}";
        assert_eq!(
            error_summary(s),
            Some(
                json!({"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"})
            )
        );
        assert_eq!(
            error_summary("x {\"message\":\"m\",\"n\":1}"),
            Some(json!({"message":"m"}))
        );
        assert_eq!(error_summary("{not json} {\"k\":1}"), Some(json!({})));
        assert_eq!(error_summary("plain text"), None);
    }

    #[test]
    fn extract_json_rules() {
        assert_eq!(
            extract_json("x ```json\n{\"a\":1}\n``` y", false).0["content"]["a"],
            1
        );
        let (o, e) = extract_json("see {not json}", false);
        assert_eq!(o["content_type"], "markdown");
        assert_eq!(e.as_deref(), Some("Failed to parse JSON output"));
        let (o, e) = extract_json("plain words", false);
        assert_eq!(o["content_type"], "markdown");
        assert!(e.is_none());
    }

    #[test]
    fn stream_events_serve_both_readings_of_codex_jsonl() {
        let out = [
            "noise",
            r#"{"type":"result","n":1}"#,
            "[1]",
            "",
            "{\"type\":\"item.completed\",\"item\":{\"type\":\"agent_message\",\"text\":\"{}\"}}\r",
            r#"{"type":"turn.completed","usage":{"in":3}}"#,
            r#"{"type":"item.completed","item":{"type":"agent_message"}}"#,
            r#"{"type":"turn.completed","usage":5}"#,
            r#"  {"type":"result","n":2}  "#,
        ]
        .join("\n");
        assert_eq!(stream_events(&out).count(), 6);
        assert_eq!(last_event(&out, "result").unwrap()["n"], 2);
        assert_eq!(last_event(&out, "nothing"), None);
        // A model run: the last agent message that has a text, the last object usage.
        assert_eq!(codex_answer(&out), (Some("{}".into()), json!({"in": 3})));
        // A subagent run: the last agent message (no text: the raw stdout), the last usage.
        let n = normalize(ProviderId::Codex, Format::Json, &out);
        assert_eq!(n.metadata["usage"], 5);
        assert_eq!(n.output["content_type"], "markdown");
        assert_eq!(
            n.parse_error.as_deref(),
            Some("Failed to parse JSON output")
        );
    }

    #[test]
    fn claude_json_and_stream_normalize() {
        let n = normalize(
            ProviderId::Claude,
            Format::Json,
            r#"{"type":"result","result":"Hi","session_id":"s1","total_cost_usd":0.5,"summary":"sum"}"#,
        );
        assert_eq!(n.output["content_type"], "markdown");
        assert_eq!(n.output["summary"], "sum");
        assert_eq!(n.metadata["session_id"], "s1");
        assert!(normalize(ProviderId::Claude, Format::Json, "not json")
            .parse_error
            .is_some());
        let stream = [
            r#"{"type":"system"}"#,
            r#"{"type":"assistant","message":{"id":"m1","content":[{"type":"text","text":"a"}]}}"#,
            r#"{"type":"assistant","message":{"id":"m1","content":[{"type":"text","text":"ab "},{"type":"tool_use","id":"t1","name":"WebSearch","input":{"query":"q"}}]}}"#,
            r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"found"}]}}"#,
            r#"{"type":"result","result":"done"}"#,
        ]
        .join("\n");
        let n = normalize(ProviderId::Claude, Format::StreamJson, &stream);
        let kinds: Vec<&str> = n.events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["message", "tool_call", "tool_result"]);
        assert_eq!(n.events[0].1["content"], "ab");
        assert_eq!(n.events[1].1["summary"], "Query: q");
        assert_eq!(n.events[2].1["tool_name"], "WebSearch");
        assert_eq!(n.output["content"], "done");
    }
}
