//! PostgREST query language subset: `select=`, horizontal filters (`col=op.value`, `not.`,
//! `or=(…)`, `and=(…)`), `order=`, `limit=`, `offset=`, evaluated against JSON rows.

use crate::store::{DbError, Row, TableDef, Ty};
use serde_json::{Map, Value};
use std::cmp::Ordering;

#[derive(Debug, Clone)]
pub enum Op {
    Eq(String),
    Neq(String),
    Gt(String),
    Gte(String),
    Lt(String),
    Lte(String),
    In(Vec<String>),
    Is(String),
    Like(String),
    ILike(String),
}

#[derive(Debug, Clone)]
pub enum Cond {
    Leaf { col: String, op: Op },
    Not(Box<Cond>),
    And(Vec<Cond>),
    Or(Vec<Cond>),
}

#[derive(Debug, Clone)]
pub struct OrderTerm {
    pub col: String,
    pub desc: bool,
    pub nulls_first: bool,
}

#[derive(Debug, Clone)]
pub struct SelItem {
    pub out: String,
    pub col: String,
}

#[derive(Debug, Default)]
pub struct Query {
    pub select: Option<Vec<SelItem>>,
    pub conds: Vec<Cond>,
    pub order: Vec<OrderTerm>,
    pub limit: Option<usize>,
    pub offset: usize,
    pub columns: Option<Vec<String>>,
    pub on_conflict: Option<Vec<String>>,
}

fn parse_err(what: &str, detail: impl Into<String>) -> DbError {
    DbError::new(400, "PGRST100", format!("\"failed to parse {what}\"")).details(detail.into())
}

pub fn no_column(table: &str, col: &str) -> DbError {
    DbError::new(400, "42703", format!("column {table}.{col} does not exist"))
}

/// Splits on top-level commas (outside parentheses and double quotes).
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut quoted = false;
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '(' if !quoted => {
                depth += 1;
                cur.push(c);
            }
            ')' if !quoted => {
                depth -= 1;
                cur.push(c);
            }
            ',' if !quoted && depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn unquote(s: &str) -> String {
    let t = s.trim();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        let inner = &t[1..t.len() - 1];
        let mut out = String::new();
        let mut esc = false;
        for c in inner.chars() {
            if esc {
                out.push(c);
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else {
                out.push(c);
            }
        }
        out
    } else {
        t.to_string()
    }
}

/// Parses `op.value` (optionally `not.op.value`) for column `col`.
pub fn parse_op_expr(col: &str, expr: &str) -> Result<Cond, DbError> {
    // `not.` prefixes, iteratively (hostile input may repeat them thousands of times).
    let mut expr = expr;
    let mut negations = 0usize;
    while let Some(rest) = expr.strip_prefix("not.") {
        expr = rest;
        negations += 1;
    }
    let leaf = parse_leaf(col, expr)?;
    Ok(if negations % 2 == 1 {
        Cond::Not(Box::new(leaf))
    } else {
        leaf
    })
}

fn parse_leaf(col: &str, expr: &str) -> Result<Cond, DbError> {
    let (op, val) = expr.split_once('.').ok_or_else(|| {
        parse_err(
            "filter",
            format!("expected <operator>.<value> in {col}={expr}"),
        )
    })?;
    let v = val.to_string();
    let op = match op {
        "eq" => Op::Eq(v),
        "neq" => Op::Neq(v),
        "gt" => Op::Gt(v),
        "gte" => Op::Gte(v),
        "lt" => Op::Lt(v),
        "lte" => Op::Lte(v),
        "like" => Op::Like(v),
        "ilike" => Op::ILike(v),
        "is" => match v.to_ascii_lowercase().as_str() {
            "null" | "true" | "false" | "unknown" | "not_null" => Op::Is(v.to_ascii_lowercase()),
            _ => return Err(parse_err("filter", format!("is. accepts null, true, false or unknown, got {v}"))),
        },
        "in" => {
            let inner = v
                .strip_prefix('(')
                .and_then(|x| x.strip_suffix(')'))
                .ok_or_else(|| parse_err("filter", format!("in. needs a parenthesised list, got {v}")))?;
            if inner.is_empty() {
                Op::In(Vec::new())
            } else {
                Op::In(split_top(inner).iter().map(|x| unquote(x)).collect())
            }
        }
        other => {
            return Err(parse_err(
                "filter",
                format!("unknown operator {other:?} in {col}={expr}; supported: eq, neq, gt, gte, lt, lte, in, is, like, ilike, not."),
            ))
        }
    };
    Ok(Cond::Leaf {
        col: col.to_string(),
        op,
    })
}

/// Parses the inside of `or=(…)` / `and=(…)`.
/// Deepest `or(and(…))` nesting accepted (bounds recursion on hostile input).
const MAX_LOGIC_DEPTH: usize = 16;

fn parse_logic(list: &str, is_or: bool) -> Result<Cond, DbError> {
    parse_logic_at(list, is_or, 0)
}

fn parse_logic_at(list: &str, is_or: bool, depth: usize) -> Result<Cond, DbError> {
    if depth >= MAX_LOGIC_DEPTH {
        return Err(parse_err(
            "logic tree",
            format!("or/and nested deeper than {MAX_LOGIC_DEPTH} levels"),
        ));
    }
    let inner = list
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| {
            parse_err(
                "logic tree",
                format!("expected a parenthesised list, got {list}"),
            )
        })?;
    let mut items = Vec::new();
    for item in split_top(inner) {
        let item = item.trim();
        let (negate, body) = match item.strip_prefix("not.") {
            Some(r) if r.starts_with("or(") || r.starts_with("and(") => (true, r),
            _ => (false, item),
        };
        let c = if let Some(r) = body.strip_prefix("or").filter(|r| r.starts_with('(')) {
            parse_logic_at(r, true, depth + 1)?
        } else if let Some(r) = body.strip_prefix("and").filter(|r| r.starts_with('(')) {
            parse_logic_at(r, false, depth + 1)?
        } else {
            let (col, expr) = body.split_once('.').ok_or_else(|| {
                parse_err(
                    "logic tree",
                    format!("expected column.operator.value, got {body}"),
                )
            })?;
            parse_op_expr(col, expr)?
        };
        items.push(if negate { Cond::Not(Box::new(c)) } else { c });
    }
    Ok(if is_or {
        Cond::Or(items)
    } else {
        Cond::And(items)
    })
}

fn parse_select(s: &str) -> Result<Vec<SelItem>, DbError> {
    let mut out = Vec::new();
    let cleaned: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    for part in split_top(&cleaned) {
        if part.is_empty() {
            continue;
        }
        if part.contains('(') {
            return Err(DbError::new(
                400,
                "PGRST200",
                format!("Could not find a relationship for '{part}' in the schema cache (embedding is not supported by this emulator)"),
            ));
        }
        let (alias, rest) = match part.split_once(':') {
            Some((a, r)) if !r.starts_with(':') => (Some(a.to_string()), r.to_string()),
            _ => (None, part.clone()),
        };
        let col = rest.split("::").next().unwrap_or("").to_string();
        out.push(SelItem {
            out: alias.unwrap_or_else(|| col.clone()),
            col,
        });
    }
    Ok(out)
}

fn parse_order(s: &str) -> Result<Vec<OrderTerm>, DbError> {
    let mut out = Vec::new();
    for term in s.split(',').filter(|t| !t.is_empty()) {
        let mut parts = term.split('.');
        let col = parts.next().unwrap_or("").to_string();
        let mut desc = false;
        let mut nulls: Option<bool> = None;
        for p in parts {
            match p {
                "asc" => desc = false,
                "desc" => desc = true,
                "nullsfirst" => nulls = Some(true),
                "nullslast" => nulls = Some(false),
                other => {
                    return Err(parse_err(
                        "order",
                        format!("unknown modifier {other:?} in order={s}"),
                    ))
                }
            }
        }
        out.push(OrderTerm {
            col,
            desc,
            nulls_first: nulls.unwrap_or(desc),
        });
    }
    Ok(out)
}

fn cond_columns<'a>(c: &'a Cond, out: &mut Vec<&'a str>) {
    match c {
        Cond::Leaf { col, .. } => out.push(col),
        Cond::Not(b) => cond_columns(b, out),
        Cond::And(v) | Cond::Or(v) => v.iter().for_each(|x| cond_columns(x, out)),
    }
}

impl Query {
    pub fn parse(def: &TableDef, params: &[(String, String)]) -> Result<Query, DbError> {
        let mut q = Query::default();
        for (k, v) in params {
            match k.as_str() {
                "select" => q.select = Some(parse_select(v)?),
                "order" => q.order = parse_order(v)?,
                "limit" => {
                    q.limit = Some(v.trim().parse().map_err(|_| {
                        parse_err(
                            "limit",
                            format!("limit must be a non-negative integer, got {v}"),
                        )
                    })?)
                }
                "offset" => {
                    q.offset = v.trim().parse().map_err(|_| {
                        parse_err(
                            "offset",
                            format!("offset must be a non-negative integer, got {v}"),
                        )
                    })?
                }
                "columns" => q.columns = Some(v.split(',').map(unquote).collect()),
                "on_conflict" => {
                    q.on_conflict = Some(v.split(',').map(|c| c.trim().to_string()).collect())
                }
                "or" => q.conds.push(parse_logic(v, true)?),
                "and" => q.conds.push(parse_logic(v, false)?),
                "not.or" => q.conds.push(Cond::Not(Box::new(parse_logic(v, true)?))),
                "not.and" => q.conds.push(Cond::Not(Box::new(parse_logic(v, false)?))),
                // Ignored PostgREST/client extras.
                "apikey" | "vsn" => {}
                col => q.conds.push(parse_op_expr(col, v)?),
            }
        }
        // Every named column must exist.
        let mut cols = Vec::new();
        for c in &q.conds {
            cond_columns(c, &mut cols);
        }
        cols.extend(q.order.iter().map(|o| o.col.as_str()));
        if let Some(sel) = &q.select {
            cols.extend(sel.iter().filter(|s| s.col != "*").map(|s| s.col.as_str()));
        }
        if let Some(oc) = &q.on_conflict {
            cols.extend(oc.iter().map(String::as_str));
        }
        for c in cols {
            if !def.has(c) {
                return Err(no_column(def.name, c));
            }
        }
        Ok(q)
    }

    pub fn matches(&self, def: &TableDef, row: &Row) -> bool {
        self.conds.iter().all(|c| eval(def, c, row) == Some(true))
    }

    pub fn sort<R: std::borrow::Borrow<Row>>(&self, def: &TableDef, rows: &mut [R]) {
        if self.order.is_empty() {
            return;
        }
        rows.sort_by(|a, b| {
            let (a, b) = (a.borrow(), b.borrow());
            for t in &self.order {
                let ty = def.column(&t.col).map(|c| c.ty).unwrap_or(Ty::Text);
                let va = a.get(&t.col).unwrap_or(&Value::Null);
                let vb = b.get(&t.col).unwrap_or(&Value::Null);
                let o = match (va.is_null(), vb.is_null()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => {
                        if t.nulls_first {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        }
                    }
                    (false, true) => {
                        if t.nulls_first {
                            Ordering::Greater
                        } else {
                            Ordering::Less
                        }
                    }
                    (false, false) => {
                        let o = cmp_values(ty, va, vb);
                        if t.desc {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    }

    /// Applies offset and limit.
    pub fn page<T>(&self, rows: Vec<T>) -> Vec<T> {
        let it = rows.into_iter().skip(self.offset);
        match self.limit {
            Some(l) => it.take(l).collect(),
            None => it.collect(),
        }
    }

    /// Projects a row onto the `select` list (`*` or no select: every column).
    pub fn project(&self, def: &TableDef, row: &Row) -> Value {
        match &self.select {
            None => Value::Object(row.clone()),
            Some(items) => {
                let mut m = Map::new();
                for it in items {
                    if it.col == "*" {
                        for c in &def.columns {
                            m.insert(
                                c.name.to_string(),
                                row.get(c.name).cloned().unwrap_or(Value::Null),
                            );
                        }
                    } else {
                        m.insert(
                            it.out.clone(),
                            row.get(&it.col).cloned().unwrap_or(Value::Null),
                        );
                    }
                }
                Value::Object(m)
            }
        }
    }
}

/// Three-valued evaluation: None is SQL's unknown (a NULL compared with anything).
pub fn eval(def: &TableDef, c: &Cond, row: &Row) -> Option<bool> {
    match c {
        Cond::Not(b) => eval(def, b, row).map(|x| !x),
        Cond::And(v) => {
            let mut unknown = false;
            for x in v {
                match eval(def, x, row) {
                    Some(false) => return Some(false),
                    None => unknown = true,
                    _ => {}
                }
            }
            if unknown {
                None
            } else {
                Some(true)
            }
        }
        Cond::Or(v) => {
            let mut unknown = false;
            for x in v {
                match eval(def, x, row) {
                    Some(true) => return Some(true),
                    None => unknown = true,
                    _ => {}
                }
            }
            if unknown {
                None
            } else {
                Some(false)
            }
        }
        Cond::Leaf { col, op } => {
            let ty = def.column(col).map(|c| c.ty).unwrap_or(Ty::Text);
            let v = row.get(col).unwrap_or(&Value::Null);
            eval_leaf(ty, v, op)
        }
    }
}

pub fn eval_leaf(ty: Ty, v: &Value, op: &Op) -> Option<bool> {
    if let Op::Is(what) = op {
        return Some(match what.as_str() {
            "null" | "unknown" => v.is_null(),
            "not_null" => !v.is_null(),
            "true" => v == &Value::Bool(true),
            "false" => v == &Value::Bool(false),
            _ => false,
        });
    }
    if v.is_null() {
        return None;
    }
    let c = |s: &str| cmp_literal(ty, v, s);
    Some(match op {
        Op::Eq(s) => c(s)? == Ordering::Equal,
        Op::Neq(s) => c(s)? != Ordering::Equal,
        Op::Gt(s) => c(s)? == Ordering::Greater,
        Op::Gte(s) => c(s)? != Ordering::Less,
        Op::Lt(s) => c(s)? == Ordering::Less,
        Op::Lte(s) => c(s)? != Ordering::Greater,
        Op::In(list) => list.iter().any(|s| c(s) == Some(Ordering::Equal)),
        Op::Like(p) => like(&text_of(v), p, false),
        Op::ILike(p) => like(&text_of(v), p, true),
        Op::Is(_) => unreachable!(),
    })
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// SQL LIKE with `%`/`*` (any run) and `_` (one char).
fn like(s: &str, pat: &str, ci: bool) -> bool {
    let (s, pat) = if ci {
        (s.to_lowercase(), pat.to_lowercase())
    } else {
        (s.to_string(), pat.to_string())
    };
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = pat.chars().collect();
    // Iterative wildcard matching with backtracking.
    let (mut i, mut j) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while i < s.len() {
        if j < p.len() && (p[j] == '_' || p[j] == s[i]) && p[j] != '%' && p[j] != '*' {
            i += 1;
            j += 1;
        } else if j < p.len() && (p[j] == '%' || p[j] == '*') {
            star = Some(j);
            mark = i;
            j += 1;
        } else if let Some(st) = star {
            j = st + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    while j < p.len() && (p[j] == '%' || p[j] == '*') {
        j += 1;
    }
    j == p.len()
}

/// Compares a stored value with a literal from the query string.
fn cmp_literal(ty: Ty, v: &Value, s: &str) -> Option<Ordering> {
    match ty {
        Ty::Int4 => {
            let a = v.as_f64()?;
            let b: f64 = s.trim().parse().ok()?;
            a.partial_cmp(&b)
        }
        Ty::Bool => {
            let a = v.as_bool()?;
            let b = match s {
                "true" | "t" => true,
                "false" | "f" => false,
                _ => return None,
            };
            Some(a.cmp(&b))
        }
        Ty::Timestamptz => {
            let a = v.as_str()?;
            match (parse_iso_ms(a), parse_iso_ms(s)) {
                (Some(x), Some(y)) => Some(x.cmp(&y)),
                _ => Some(a.cmp(s)),
            }
        }
        Ty::Uuid => Some(
            v.as_str()?
                .to_ascii_lowercase()
                .cmp(&s.to_ascii_lowercase()),
        ),
        Ty::Text => Some(text_of(v).as_str().cmp(s)),
        Ty::Jsonb => match serde_json::from_str::<Value>(s) {
            Ok(lit) if &lit == v => Some(Ordering::Equal),
            Ok(_) => Some(v.to_string().cmp(&s.to_string()).then(Ordering::Less)),
            Err(_) => Some(text_of(v).as_str().cmp(s)),
        },
    }
}

/// Compares two stored values of one column type.
pub fn cmp_values(ty: Ty, a: &Value, b: &Value) -> Ordering {
    match ty {
        Ty::Int4 => a
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&b.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        Ty::Bool => a.as_bool().cmp(&b.as_bool()),
        Ty::Timestamptz => {
            let (sa, sb) = (text_of(a), text_of(b));
            match (parse_iso_ms(&sa), parse_iso_ms(&sb)) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => sa.cmp(&sb),
            }
        }
        _ => text_of(a).cmp(&text_of(b)),
    }
}

/// Parses `YYYY-MM-DD[T ]HH:MM[:SS[.fff…]][Z|±HH[:MM]]` (or a bare date) into ms since epoch.
pub fn parse_iso_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (mut h, mut mi, mut sec, mut ms) = (0i64, 0i64, 0i64, 0i64);
    let mut i = 10;
    if b.len() > 10 {
        if b[10] != b'T' && b[10] != b't' && b[10] != b' ' {
            return None;
        }
        h = num(11..13)?;
        if b.get(13) != Some(&b':') {
            return None;
        }
        mi = num(14..16)?;
        i = 16;
        if b.get(16) == Some(&b':') {
            sec = num(17..19)?;
            i = 19;
            if b.get(19) == Some(&b'.') {
                let mut j = 20;
                let mut frac = String::new();
                while j < b.len() && b[j].is_ascii_digit() {
                    frac.push(b[j] as char);
                    j += 1;
                }
                let mut f3: String = frac.chars().take(3).collect();
                while f3.len() < 3 {
                    f3.push('0');
                }
                ms = f3.parse().ok()?;
                i = j;
            }
        }
    }
    let mut offset_min = 0i64;
    if i < b.len() {
        match b[i] {
            b'Z' | b'z' => {}
            b'+' | b'-' => {
                let sign = if b[i] == b'-' { -1 } else { 1 };
                let oh = num(i + 1..i + 3)?;
                let om = if b.get(i + 3) == Some(&b':') {
                    num(i + 4..i + 6)?
                } else if b.len() >= i + 5 {
                    num(i + 3..i + 5)?
                } else {
                    0
                };
                offset_min = sign * (oh * 60 + om);
            }
            _ => return None,
        }
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) - offset_min * 60) * 1000 + ms)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_parse() {
        assert_eq!(parse_iso_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_iso_ms("2026-01-05T11:11:12.345Z"),
            Some(1_767_611_472_345)
        );
        assert_eq!(
            parse_iso_ms("2026-01-05T12:11:12.345+01:00"),
            Some(1_767_611_472_345)
        );
        assert_eq!(parse_iso_ms("garbage"), None);
    }

    #[test]
    fn like_patterns() {
        assert!(like("hello world", "hello%", false));
        assert!(like("hello world", "*world", false));
        assert!(like("HeLLo", "h_llo", true));
        assert!(!like("hello", "h_lo", false));
    }

    #[test]
    fn split_lists() {
        assert_eq!(split_top("a,\"b,c\",(d,e)"), vec!["a", "\"b,c\"", "(d,e)"]);
        assert_eq!(unquote("\"b,c\""), "b,c");
    }
}
