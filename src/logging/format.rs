//! How one log record becomes one line: `text` for people, `json` for log
//! pipelines (one object per line).
//!
//! Both formats are plain: no terminal escapes are ever put in a record
//! (colour is added by the stream writer, and only on a terminal, see
//! [`super::stream`]). Both are one line whatever the message holds: text
//! shows control characters escaped, JSON escapes them as JSON does.

use std::fmt::Write as _;

use crate::text;

/// `[daemon] log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-11-23T21:19:34.123Z  INFO [4242] worker 3: message key=value`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `pid`, `role`,
    /// `slot`, `worker_id`, `message`, `fields`.
    Json,
}

impl LogFormat {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// A field's value, kept typed so JSON shows numbers as numbers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl Value {
    fn text(&self, out: &mut String) {
        match self {
            Value::Str(s) => {
                let _ = write!(out, "{s:?}");
            }
            Value::I64(n) => {
                let _ = write!(out, "{n}");
            }
            Value::U64(n) => {
                let _ = write!(out, "{n}");
            }
            Value::F64(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Bool(b) => {
                let _ = write!(out, "{b}");
            }
        }
    }

    fn json(&self, out: &mut String) {
        match self {
            Value::Str(s) => json_str(out, s),
            Value::F64(n) if !n.is_finite() => json_str(out, &n.to_string()),
            other => other.text(out),
        }
    }
}

/// Who writes a record: the parent, or worker `slot`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who<'a> {
    pub pid: u32,
    /// `parent`, `worker 3`, `guard`: the text format's name.
    pub role: &'a str,
    pub slot: Option<u32>,
    pub worker_id: Option<u64>,
}

impl Who<'_> {
    fn json_role(&self) -> &str {
        if self.slot.is_some() {
            "worker"
        } else if self.role.is_empty() {
            "parent"
        } else {
            self.role
        }
    }
}

/// A span around an event: its name and fields.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpanFields {
    pub name: &'static str,
    pub fields: Vec<(&'static str, Value)>,
}

/// One record.
pub(crate) struct Entry<'a> {
    pub level: tracing::Level,
    pub message: &'a str,
    pub fields: &'a [(&'static str, Value)],
    /// Outermost first.
    pub spans: &'a [SpanFields],
}

/// The longest message a line carries, in bytes: room for a captured
/// output line ([`text::MAX_LINE`]) with its prefix and marks.
pub(crate) const MAX_MESSAGE: usize = 4 * text::MAX_LINE;

/// The syslog priority of a tracing level (journald's `<N>` prefix).
pub(crate) fn priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

fn level_text(level: tracing::Level) -> &'static str {
    match level {
        tracing::Level::ERROR => "ERROR",
        tracing::Level::WARN => " WARN",
        tracing::Level::INFO => " INFO",
        tracing::Level::DEBUG => "DEBUG",
        tracing::Level::TRACE => "TRACE",
    }
}

fn level_json(level: tracing::Level) -> &'static str {
    match level {
        tracing::Level::ERROR => "error",
        tracing::Level::WARN => "warning",
        tracing::Level::INFO => "info",
        tracing::Level::DEBUG => "debug",
        tracing::Level::TRACE => "trace",
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The record as one line, newline included.
pub(crate) fn render(format: LogFormat, who: &Who<'_>, e: &Entry<'_>) -> Vec<u8> {
    match format {
        LogFormat::Text => text_line(who, e),
        LogFormat::Json => json_line(who, e),
    }
    .into_bytes()
}

/// `2026-11-23T21:19:34.123Z  INFO [4242] worker 3: job{id=7}: message attempt=3`.
fn text_line(who: &Who<'_>, e: &Entry<'_>) -> String {
    let mut body = String::with_capacity(e.message.len() + 32);
    for s in e.spans {
        body.push_str(s.name);
        if !s.fields.is_empty() {
            body.push('{');
            for (i, (k, v)) in s.fields.iter().enumerate() {
                if i > 0 {
                    body.push(' ');
                }
                body.push_str(k);
                body.push('=');
                v.text(&mut body);
            }
            body.push('}');
        }
        body.push_str(": ");
    }
    body.push_str(e.message);
    for (k, v) in e.fields {
        body.push(' ');
        body.push_str(k);
        body.push('=');
        v.text(&mut body);
    }
    let mut line = format!("{} {} [{}] {}: ", now(), level_text(e.level), who.pid, who.role);
    line.push_str(&one_line(&body));
    line.push('\n');
    line
}

/// The longest JSON line: a longer one (huge field values) is written
/// without its fields, marked `"cut":true`, so it stays one valid object
/// that the relay and log readers take whole.
const MAX_JSON: usize = 2 * MAX_MESSAGE;

fn json_line(who: &Who<'_>, e: &Entry<'_>) -> String {
    let line = json_object(who, e, true);
    if line.len() <= MAX_JSON {
        return line;
    }
    json_object(who, e, false)
}

fn json_object(who: &Who<'_>, e: &Entry<'_>, with_fields: bool) -> String {
    let mut out = String::with_capacity(e.message.len() + 160);
    out.push_str("{\"timestamp\":\"");
    out.push_str(&now());
    out.push_str("\",\"level\":\"");
    out.push_str(level_json(e.level));
    let _ = write!(out, "\",\"pid\":{},\"role\":", who.pid);
    json_str(&mut out, who.json_role());
    if let Some(slot) = who.slot {
        let _ = write!(out, ",\"slot\":{slot}");
    }
    if let Some(id) = who.worker_id {
        let _ = write!(out, ",\"worker_id\":{id}");
    }
    out.push_str(",\"message\":");
    json_str(&mut out, text::cut(e.message, MAX_MESSAGE));
    // The event's fields, and its spans' (the event's win a clash).
    let mut fields: Vec<(&str, &Value)> = Vec::new();
    for (k, v) in e
        .spans
        .iter()
        .flat_map(|s| s.fields.iter())
        .chain(e.fields.iter())
    {
        match fields.iter_mut().find(|(n, _)| n == k) {
            Some(slot) => slot.1 = v,
            None => fields.push((k, v)),
        }
    }
    if !with_fields {
        out.push_str(",\"cut\":true}\n");
        return out;
    }
    if !fields.is_empty() {
        out.push_str(",\"fields\":{");
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_str(&mut out, k);
            out.push(':');
            v.json(&mut out);
        }
        out.push('}');
    }
    if !e.spans.is_empty() {
        out.push_str(",\"spans\":[");
        for (i, s) in e.spans.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_str(&mut out, s.name);
        }
        out.push(']');
    }
    out.push_str("}\n");
    out
}

/// `s` as a JSON string (quotes included): control characters escaped, so
/// the object stays on one line.
fn json_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"\""),
    }
}

/// A message as one line: control characters (a newline in an error
/// text, a CR or an escape sequence from user data) shown escaped, so no
/// text can start a forged line or repaint a terminal, and cut at a
/// character boundary to [`MAX_MESSAGE`].
pub(crate) fn one_line(message: &str) -> std::borrow::Cow<'_, str> {
    let escaped = text::escape_controls(message);
    if escaped.len() <= MAX_MESSAGE {
        return escaped;
    }
    text::escape_line_max(message.as_bytes(), MAX_MESSAGE).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Who<'static> {
        Who {
            pid: 42,
            role: "worker 3",
            slot: Some(3),
            worker_id: Some(17),
        }
    }

    #[test]
    fn text_shows_spans_and_fields_without_escapes() {
        let spans = [SpanFields {
            name: "job",
            fields: vec![("id", Value::U64(7))],
        }];
        let fields = [("attempt", Value::I64(3)), ("queue", Value::Str("mail".into()))];
        let line = render(
            LogFormat::Text,
            &who(),
            &Entry {
                level: tracing::Level::WARN,
                message: "retrying",
                fields: &fields,
                spans: &spans,
            },
        );
        let line = String::from_utf8(line).unwrap();
        assert!(
            line.ends_with(" WARN [42] worker 3: job{id=7}: retrying attempt=3 queue=\"mail\"\n"),
            "{line}"
        );
        assert!(!line.contains('\x1b'));
    }

    #[test]
    fn json_is_one_object_with_who_and_fields() {
        let spans = [SpanFields {
            name: "job",
            fields: vec![("id", Value::U64(7)), ("attempt", Value::I64(1))],
        }];
        let fields = [
            ("attempt", Value::I64(3)),
            ("ratio", Value::F64(f64::NAN)),
            ("ok", Value::Bool(true)),
        ];
        let line = render(
            LogFormat::Json,
            &who(),
            &Entry {
                level: tracing::Level::ERROR,
                message: "line one\nline \"two\"",
                fields: &fields,
                spans: &spans,
            },
        );
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["role"], "worker");
        assert_eq!(v["slot"], 3);
        assert_eq!(v["worker_id"], 17);
        assert_eq!(v["message"], "line one\nline \"two\"");
        assert_eq!(v["fields"]["attempt"], 3, "the event's field wins: {v}");
        assert_eq!(v["fields"]["id"], 7);
        assert_eq!(v["fields"]["ratio"], "NaN");
        assert_eq!(v["fields"]["ok"], true);
        assert_eq!(v["spans"][0], "job");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn a_json_line_with_huge_fields_stays_one_bounded_object() {
        let fields = [("blob", Value::Str("x".repeat(3 * MAX_MESSAGE)))];
        let line = render(
            LogFormat::Json,
            &who(),
            &Entry {
                level: tracing::Level::INFO,
                message: "big",
                fields: &fields,
                spans: &[],
            },
        );
        assert!(line.len() <= MAX_JSON);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["message"], "big");
        assert_eq!(v["cut"], true);
        assert!(v.get("fields").is_none());
    }

    #[test]
    fn the_parent_has_no_slot() {
        let who = Who {
            pid: 1,
            role: "parent",
            slot: None,
            worker_id: None,
        };
        let line = render(
            LogFormat::Json,
            &who,
            &Entry {
                level: tracing::Level::INFO,
                message: "m",
                fields: &[],
                spans: &[],
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["role"], "parent");
        assert!(v.get("slot").is_none() && v.get("fields").is_none());
    }

    #[test]
    fn messages_become_one_escaped_line() {
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(
            one_line("user said: ok\n2026-01-01T00:00:00.000Z ERROR [1] parent: forged\r\x1b[2J"),
            "user said: ok\\n2026-01-01T00:00:00.000Z ERROR [1] parent: forged\\r\\x1b[2J"
        );
        let long = "é".repeat(MAX_MESSAGE);
        let out = one_line(&long);
        assert!(out.len() <= MAX_MESSAGE && out.ends_with(text::CUT_MARK));
        let captured = format!("worker 1: {} [line continues]", "x".repeat(text::MAX_LINE));
        assert_eq!(
            one_line(&captured),
            captured,
            "a captured piece is never cut again"
        );
    }
}
